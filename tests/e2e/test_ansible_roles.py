"""The Ansible roles: lint, syntax, and real runs against this machine inside a temporary root.

The voice_agent role is applied for real (connection=local) with every path under a temporary
folder, no systemd and no new user: it builds a wheel from this repository, installs it into the
role's virtual environment and renders a config that the installed `voice-agent check-config`
accepts. A second run must change nothing. The mosquitto_broker role renders its files into a
temporary root too, and a real Mosquitto started from them must enforce the ACL.

Ansible comes from .cache/ansible-venv (CI installs it there) or from PATH.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ansible import (ANSIBLE_DIR, ROOT, ansible_env, ansible_tool, current_user_group,
                                   local_broker_inventory, local_broker_vars, recap, run_playbook, target_python)


SECRET = "s3cret-never-logged"


# --- helpers ------------------------------------------------------------------------------------


def venv_python() -> str:
    """An interpreter that can create a virtual environment with pip (the role's voice_agent_python)."""
    for candidate in ("/usr/bin/python3", getattr(sys, "_base_executable", sys.executable)):
        if Path(candidate).exists() and subprocess.run(
            [candidate, "-c", "import ensurepip, venv"], capture_output=True, timeout=30
        ).returncode == 0:
            return candidate
    pytest.fail("no Python here can create a virtual environment (apt-get install python3-venv)")


def changed_tasks(result: subprocess.CompletedProcess) -> list[str]:
    """Names of the tasks that reported changed, for readable failure messages."""
    names, current = [], ""
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            names.append(current)
    return names


# --- lint and syntax ----------------------------------------------------------------------------


def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [ansible_tool("ansible-lint"), "--profile", "production", "--nocolor", "ansible/"],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"ansible-lint failed:\n{result.stdout}\n{result.stderr}"


def test_site_playbook_syntax_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [ansible_tool("ansible-playbook"), "--syntax-check", "-i", "ansible/inventory.example.ini",
         "ansible/site.yml"],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"syntax check failed:\n{result.stdout}\n{result.stderr}"


def test_unit_template_renders_the_repository_unit(tmp_path: Path) -> None:
    """With default paths the role's unit has exactly the directives of systemd/voice-agent.service."""
    role = ANSIBLE_DIR / "roles" / "voice_agent"
    rendered = tmp_path / "voice-agent.service"
    playbook = tmp_path / "render-unit.yml"
    playbook.write_text(json.dumps([{
        "name": "Render the unit with the role's defaults",
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
        "tasks": [{
            "name": "Render",
            "ansible.builtin.template": {"src": str(role / "templates" / "voice-agent.service.j2"),
                                         "dest": str(rendered), "mode": "0644"},
        }],
    }]))
    result = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
         "-e", f"ansible_python_interpreter={target_python()}"],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"rendering failed:\n{result.stdout}\n{result.stderr}"

    def directives(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    assert directives(rendered.read_text()) == directives((ROOT / "systemd" / "voice-agent.service").read_text())


# --- the voice_agent role, applied for real -----------------------------------------------------


class Install:
    """One temporary root with the role applied to it."""

    first: subprocess.CompletedProcess

    def __init__(self, tmp: Path, wheel: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.root.mkdir()
        self.inventory = tmp / "inventory.ini"
        self.inventory.write_text(
            "[voice_agents]\n"
            f"localhost ansible_connection=local ansible_python_interpreter={target_python()}\n"
        )
        user, group = current_user_group()
        self.vars: dict[str, Any] = {
            "ansible_become": False,
            "voice_agent_root": str(self.root),
            "voice_agent_manage_service": False,
            "voice_agent_create_user": False,
            "voice_agent_install_packages": False,
            "voice_agent_user": user,
            "voice_agent_group": group,
            "voice_agent_python": venv_python(),
            "voice_agent_wheel": str(wheel),
            "voice_agent_extras": [],
            "voice_agent_device_id": "pi-test_1",
            "voice_agent_mqtt_host": "127.0.0.1",
            "voice_agent_mqtt_password": SECRET,
            "voice_agent_telemetry_interval_s": 30,
        }
        self.config = self.root / "etc" / "voice-agent" / "config.yaml"
        self.env_file = self.root / "etc" / "voice-agent" / "env"
        self.overlay = self.root / "var" / "lib" / "voice-agent" / "config-overlay.yaml"
        self.cli = self.root / "opt" / "voice-agent" / "venv" / "bin" / "voice-agent"

    def apply(self, *args: str, **extra: Any) -> subprocess.CompletedProcess:
        return run_playbook(self.tmp, self.inventory, {**self.vars, **extra}, *args)


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """The role applied once (with --diff) to a fresh root; the first run must change things."""
    ansible_tool("ansible-playbook")
    tmp = tmp_path_factory.mktemp("ansible-install")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}\n{built.stderr}"
    wheel = next((tmp / "dist").glob("voice_agent-*.whl"))
    inst = Install(tmp, wheel)
    inst.first = inst.apply("--diff")
    return inst


def test_first_run_installs_a_config_the_agent_accepts(install: Install) -> None:
    counts = recap(install.first)
    assert counts["changed"] > 0
    checked = subprocess.run([str(install.cli), "check-config", str(install.config)],
                             cwd=install.tmp, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"check-config refused the rendered config:\n{checked.stderr}"
    config = yaml.safe_load(install.config.read_text())
    assert config["device_id"] == "pi-test_1"
    assert config["mqtt"]["host"] == "127.0.0.1"
    assert config["mqtt"]["username"] == "pi-test_1"
    assert config["state_dir"] == str(install.root / "var" / "lib" / "voice-agent")
    assert config["inbox"]["path"] == str(install.root / "srv" / "voice-agent" / "inbox")
    assert config["telemetry"]["interval_s"] == 30


def test_secrets_stay_in_the_env_file_and_out_of_the_log(install: Install) -> None:
    assert SECRET not in install.config.read_text()
    assert f'VOICE_AGENT_MQTT_PASSWORD="{SECRET}"' in install.env_file.read_text().splitlines()
    assert SECRET not in install.first.stdout + install.first.stderr, "the password leaked into the output"


def test_file_modes(install: Install) -> None:
    assert install.config.stat().st_mode & 0o777 == 0o640
    assert install.env_file.stat().st_mode & 0o777 == 0o600
    assert install.config.parent.stat().st_mode & 0o777 == 0o750
    inbox = Path(yaml.safe_load(install.config.read_text())["inbox"]["path"])
    assert inbox.stat().st_mode & 0o7777 == 0o1770   # group-writable, sticky: nobody renames the agent's folders


def test_second_run_changes_nothing_and_keeps_the_overlay(install: Install) -> None:
    """A re-run is a no-op, and the overlay of remote config changes (config/set) survives it."""
    install.overlay.write_text("telemetry:\n  interval_s: 5\n")
    result = install.apply()
    assert recap(result)["changed"] == 0, f"changed on a re-run: {changed_tasks(result)}"
    assert install.overlay.exists(), "a plain re-run removed the remote config overlay"


def test_check_mode_changes_nothing(install: Install) -> None:
    result = install.apply("--check", "--diff")
    assert recap(result)["changed"] == 0, f"check mode reports changes: {changed_tasks(result)}"


def test_check_mode_on_a_fresh_host_fails_nothing(install: Install, tmp_path: Path) -> None:
    """A dry run before the first real one: nothing installed yet, the service tasks included."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = install.apply("--check", "--diff", voice_agent_root=str(fresh), voice_agent_manage_service=True)
    assert recap(result)["changed"] > 0
    assert list(fresh.iterdir()) == [], "check mode wrote files"


def test_reset_overlay_removes_the_overlay(install: Install) -> None:
    install.overlay.write_text("telemetry:\n  interval_s: 5\n")
    result = install.apply(voice_agent_reset_overlay=True)
    assert changed_tasks(result) == ["voice_agent : Remove the remote configuration overlay"], recap(result)
    assert not install.overlay.exists()


def test_rebuilt_wheel_with_the_same_version_is_reinstalled(install: Install) -> None:
    """pip alone would call an equal version 'already satisfied'; the role reinstalls a changed wheel."""
    rebuilt_dir = install.tmp / "rebuilt"
    rebuilt_dir.mkdir()
    rebuilt = rebuilt_dir / Path(install.vars["voice_agent_wheel"]).name
    shutil.copy(install.vars["voice_agent_wheel"], rebuilt)
    with zipfile.ZipFile(rebuilt, "a") as wheel:
        wheel.writestr("agent/_rebuilt_marker.py", "REBUILT = True\n")
    install.vars["voice_agent_wheel"] = str(rebuilt)

    result = install.apply()
    assert sorted(changed_tasks(result)) == [
        "voice_agent : Copy the agent wheel", "voice_agent : Reinstall the agent when the wheel changed",
    ], recap(result)
    # cwd away from the repository: `python -c` would import ./agent instead of the installed one.
    # and without PYTHONPATH, which names a checkout when the tests run from one (the guide sets it)
    marker = subprocess.run([str(install.cli.with_name("python")), "-c", "import agent._rebuilt_marker"],
                            cwd=install.tmp, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert marker.returncode == 0, f"the rebuilt wheel was not installed:\n{marker.stderr}"
    assert recap(install.apply())["changed"] == 0


def test_a_config_the_agent_refuses_never_lands(install: Install) -> None:
    before = install.config.read_text()
    result = install.apply("--tags", "voice_agent_configure",
                           voice_agent_config_extra={"jobs": {"max_concurent": 2}})
    assert result.returncode != 0, "a misspelt key was accepted"
    assert "max_concurrent" in result.stdout, "the agent's own checker did not explain the refusal"
    assert install.config.read_text() == before


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"voice_agent_device_id": "kitchen/1"}, "must match"),
        ({"voice_agent_version": "0.1.0"}, "exactly one of voice_agent_wheel"),
        ({"voice_agent_mqtt_port": 70000}, "port 1-65535"),
        ({"voice_agent_memory_warn_percent": 95}, "Need 1 <= warn"),
    ],
    ids=["device-id", "wheel-and-version", "port", "thresholds"],
)
def test_preflight_refuses_bad_input(install: Install, bad: dict[str, Any], message: str) -> None:
    result = install.apply("--tags", "voice_agent_preflight", **bad)
    assert result.returncode != 0, "preflight accepted bad input"
    assert message in result.stdout + result.stderr


# --- the mosquitto_broker role ------------------------------------------------------------------


class Client:
    """A small paho client that records what it receives; every wait is bounded."""

    def __init__(self, port: int, username: str, password: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, reason, p: self.connack.put(reason)
        self.client.on_message = lambda c, u, m: self.received.put((m.topic, m.payload.decode()))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)
        if self.reason.is_failure:  # no automatic retries that could take over a later session
            self.close()

    def subscribe(self, *filters: str) -> None:
        done: queue.Queue = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, p: done.put(codes)
        self.client.subscribe([(f, 1) for f in filters])
        done.get(timeout=10)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def drain(self, quiet_s: float = 0.5) -> set[tuple[str, str]]:
        """Everything received until nothing arrived for `quiet_s`."""
        got = set()
        while True:
            try:
                got.add(self.received.get(timeout=quiet_s))
            except queue.Empty:
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_role_is_idempotent_and_confines_each_device(tmp_path: Path) -> None:
    from tests.support.broker import free_port, mosquitto_binary

    mosquitto = mosquitto_binary()
    root, inventory = local_broker_inventory(tmp_path)
    user, _ = current_user_group()
    port = free_port()
    broker_vars: dict[str, Any] = {
        **local_broker_vars(root, port),
        "mosquitto_broker_extra_config": ["persistence false"],
        "mosquitto_broker_devices": [
            {"device_id": "pi-a", "password": "pw:a with spaces"},
            {"device_id": "pi-b", "password": "pw-b"},
        ],
        "mosquitto_broker_dashboard_password": "dash",
    }
    first = run_playbook(tmp_path, inventory, broker_vars, "--diff")
    assert recap(first)["changed"] > 0
    assert "pw-b" not in first.stdout + first.stderr
    second = run_playbook(tmp_path, inventory, broker_vars)
    assert recap(second)["changed"] == 0, f"changed on a re-run: {changed_tasks(second)}"

    passwd = root / "etc" / "mosquitto" / "voice-agent.passwd"
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert "pw-b" not in passwd.read_text()

    # Debian's mosquitto.conf includes conf.d; as root Mosquitto would drop to user "mosquitto".
    main_conf = tmp_path / "mosquitto.conf"
    main_conf.write_text(f"user {user}\ninclude_dir {root}/etc/mosquitto/conf.d\n")
    log = open(tmp_path / "mosquitto.log", "wb")
    proc = subprocess.Popen([mosquitto, "-c", str(main_conf)], stdout=log, stderr=log)
    clients: list[Client] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"mosquitto exited: {(tmp_path / 'mosquitto.log').read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
                time.sleep(0.05)

        wrong = Client(port, "pi-a", "wrong")
        clients.append(wrong)
        assert wrong.reason.is_failure, "a wrong password was accepted"

        dashboard = Client(port, "dashboard", "dash")
        pi_a = Client(port, "pi-a", "pw:a with spaces")
        clients += [dashboard, pi_a]
        assert not dashboard.reason.is_failure and not pi_a.reason.is_failure
        dashboard.subscribe("voice/#")
        pi_a.subscribe("voice/pi-a/request/#", "voice/all/request/#", "voice/pi-b/request/#", "voice/pi-b/#")

        pi_a.publish("voice/pi-a/state", "mine")
        pi_a.publish("voice/pi-b/state", "forged")
        pi_a.publish("voice/all/request/ping", "forged")
        assert dashboard.drain() == {("voice/pi-a/state", "mine")}

        dashboard.publish("voice/pi-a/request/ping", "1")
        dashboard.publish("voice/all/request/ping", "2")
        dashboard.publish("voice/pi-b/request/ping", "3")
        dashboard.publish("voice/pi-b/state", "4")
        assert pi_a.drain() == {("voice/pi-a/request/ping", "1"), ("voice/all/request/ping", "2")}

        # A changed password rewrites the file (and nothing else); the new one works after a reload.
        broker_vars["mosquitto_broker_devices"][1]["password"] = "pw-b-2"
        third = run_playbook(tmp_path, inventory, broker_vars)
        assert recap(third)["changed"] == 1, f"expected only the password file: {changed_tasks(third)}"
        proc.send_signal(signal.SIGHUP)  # as the role's reload handler does through systemd
        deadline = time.monotonic() + 10
        while True:
            pi_b = Client(port, "pi-b", "pw-b-2")
            clients.append(pi_b)
            if not pi_b.reason.is_failure:
                break
            assert time.monotonic() < deadline, "the new password was not accepted after SIGHUP"
            time.sleep(0.1)
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
