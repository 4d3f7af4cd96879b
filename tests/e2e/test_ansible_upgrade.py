"""A fleet upgrade with the real ansible-playbook: one device at a time, rolled back on failure.

Two devices on this machine (connection=local, each in its own temporary root), each agent
running under the test supervisor (tests/support/supervisor.py, standing in for systemd: the
role's `voice_agent_restart_command` sends it SIGUSR1, which is `systemctl restart`), on a real
Mosquitto. Three wheels of this repository that differ only in their version are built.

The devices start on 0.9.0 (installed directly, as a first run of the role leaves them).
1. Both devices are upgraded: the second restarts only after the first is back `online` with
   the new version (site.yml: serial 1, the role waits with its online check).
2. The next upgrade breaks the first device's config (a broker port where nothing listens:
   `check-config` accepts it, the agent cannot come online). The role rolls the first device back
   to the version and config it ran, restarts it and waits for it; the play fails and the second
   device is never touched (no task runs there, its agent is not restarted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.test_ansible_roles import changed_tasks, venv_python
from tests.support.ansible import ANSIBLE_DIR, ansible_env, ansible_tool, current_user_group, target_python
from tests.support.broker import Broker, free_port
from tests.support.paths import REPO
from tests.support.probe import Probe

SUPERVISOR = REPO / "tests" / "support" / "supervisor.py"
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "agent", "handlers")


def installed_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without PYTHONPATH: the devices run the installed package, not this checkout."""
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def build_wheel(tmp: Path, version: str) -> Path:
    """A wheel of this repository whose only difference is `agent.__version__`."""
    src = tmp / f"src-{version}"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy(path, src / name)
    init = src / "agent" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return next((tmp / "dist").glob(f"voice_agent-{version}-*.whl"))


class Device:
    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.root = tmp / name
        self.root.mkdir()
        self.cli = self.root / "opt/voice-agent/venv/bin/voice-agent"
        self.config = self.root / "etc/voice-agent/config.yaml"
        self.events = tmp / f"{name}-supervisor.jsonl"
        self.proc: subprocess.Popen | None = None

    def preinstall(self, wheel: Path, broker: Broker) -> None:
        """The device as a first run of the role leaves it (tested in test_ansible_roles.py), made
        directly to keep this test short: the role's venv, seeing this test venv's packages through
        a .pth file (no dependency downloaded again), the agent from `wheel`, and a config.yaml
        (the role's next run renders its own)."""
        venv = self.root / "opt/voice-agent/venv"
        subprocess.run([venv_python(), "-m", "venv", str(venv)], check=True, timeout=120)
        ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        target = next(venv.glob("lib/python*/site-packages"))
        (target / "test-deps.pth").write_text("\n".join(ours) + "\n")
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                       timeout=300, env=installed_env(dict(os.environ)), cwd=self.root)
        self.config.parent.mkdir(parents=True)
        self.config.write_text(yaml.safe_dump({
            "device_id": self.name, "state_dir": str(self.root / "var/lib/voice-agent"),
            "mqtt": {"host": "127.0.0.1", "port": broker.port}, "inbox": {"path": str(self.root / "inbox")}}))

    def start(self) -> None:
        log = open(self.events.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen([sys.executable, str(SUPERVISOR), "--events", str(self.events), "--",
                                      str(self.cli), "run", "--config", str(self.config)],
                                     stdout=log, stderr=log, cwd=self.root, env=installed_env(dict(os.environ)))

    def starts(self) -> list[dict[str, Any]]:
        lines = self.events.read_text().splitlines() if self.events.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == "start"]

    def installed(self) -> str:
        return subprocess.run([str(self.cli), "version"], capture_output=True, text=True, timeout=60, cwd=self.root,
                              env=installed_env(dict(os.environ))).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def inventory(tmp: Path, devices: list[Device], broker: Broker, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    user, group = current_user_group()
    hosts = {}
    for d in devices:
        hosts[d.name] = {
            "ansible_connection": "local", "ansible_python_interpreter": target_python(),
            "voice_agent_root": str(d.root), "voice_agent_device_id": d.name,
            "voice_agent_restart_command": ["kill", "-USR1", str(d.proc.pid)] if d.proc else [],
            **(extra or {}).get(d.name, {}),
        }
    path = tmp / f"inventory-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"voice_agents": {"hosts": hosts}}, "vars": {
        "ansible_become": False, "voice_agent_manage_service": False, "voice_agent_create_user": False,
        "voice_agent_install_packages": False, "voice_agent_user": user, "voice_agent_group": group,
        "voice_agent_python": venv_python(), "voice_agent_extras": [],
        "voice_agent_mqtt_host": "127.0.0.1", "voice_agent_mqtt_port": broker.port,
        "voice_agent_telemetry_interval_s": 0, "voice_agent_wait_online_timeout_s": 30}}}))
    return path


def play(tmp: Path, inv: Path, wheel: Path, **extra: Any) -> subprocess.CompletedProcess:
    vars_file = tmp / f"vars-{time.monotonic_ns()}.json"
    vars_file.write_text(json.dumps({"voice_agent_wheel": str(wheel), **extra}))
    return subprocess.run([ansible_tool("ansible-playbook"), "-i", str(inv), str(ANSIBLE_DIR / "site.yml"),
                           "-e", f"@{vars_file}"], cwd=tmp, env=installed_env(ansible_env(tmp)), capture_output=True,
                          text=True, timeout=900)


def state_of(probe: Probe, device: str, pred=lambda s: True, what: str = "state") -> dict[str, Any]:
    return probe.wait_for(f"voice/{device}/state", lambda m: pred(m.json), timeout=60, what=what)[-1].json


def test_rolling_upgrade_one_device_at_a_time_and_a_failed_one_rolled_back(tmp_path: Path) -> None:
    ansible_tool("ansible-playbook")
    wheels = {v: build_wheel(tmp_path, v) for v in ("0.9.0", "0.9.1", "0.9.2")}
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port, subscribe=("voice/#",))
    a, b = Device(tmp_path, "dev-a"), Device(tmp_path, "dev-b")
    try:
        for d in (a, b):
            d.preinstall(wheels["0.9.0"], broker)
            assert d.installed() == "0.9.0"
            d.start()
        for d in (a, b):
            state_of(probe, d.name, lambda s: s["version"] == "0.9.0", f"{d.name} online with 0.9.0")

        # 1. both upgraded, one after the other
        t0 = time.monotonic()
        upgrade = play(tmp_path, inventory(tmp_path, [a, b], broker), wheels["0.9.1"])
        print(f"rolling upgrade of two devices: {time.monotonic() - t0:.0f} s")
        assert upgrade.returncode == 0, upgrade.stdout[-5000:]
        new = {d.name: state_of(probe, d.name, lambda s: s["version"] == "0.9.1", f"{d.name} on 0.9.1")
               for d in (a, b)}
        a_started = datetime.fromisoformat(new["dev-a"]["started_at"].replace("Z", "+00:00")).timestamp()
        assert a_started < b.starts()[-1]["t"], "dev-b was restarted before dev-a was back"
        assert len(a.starts()) == 2 and len(b.starts()) == 2
        assert "Wait for online with the installed version" in upgrade.stdout

        # 2. dev-a's config is broken: rolled back to 0.9.1, dev-b never touched
        b_starts, b_state = len(b.starts()), new["dev-b"]
        broken = play(tmp_path, inventory(tmp_path, [a, b], broker, {"dev-a": {"voice_agent_mqtt_port": free_port()}}),
                      wheels["0.9.2"], voice_agent_wait_online_timeout_s=15)
        out = broken.stdout
        assert broken.returncode != 0, out[-5000:]
        assert "rolled back to 0.9.1" in out and "The next devices were not touched" in out, out[-5000:]
        assert a.installed() == "0.9.1"
        assert yaml.safe_load(a.config.read_text())["mqtt"]["port"] == broker.port, "the old config.yaml is back"
        back = state_of(probe, "dev-a", lambda s: s["version"] == "0.9.1"
                        and s["started_at"] > new["dev-a"]["started_at"], "dev-a back on 0.9.1 after the rollback")
        assert back["version"] == "0.9.1"
        assert "dev-b" not in re.findall(r"^(?:ok|changed|fatal|skipping): \[([^\]]+)\]", out, re.MULTILINE), \
            "a task ran on dev-b"
        assert b.installed() == "0.9.1" and len(b.starts()) == b_starts, "dev-b was touched"
        assert state_of(probe, "dev-b")["started_at"] == b_state["started_at"]
        print("changed on dev-a during the failed upgrade:", changed_tasks(broken))
    finally:
        for d in (a, b):
            d.stop()
        probe.close()
        broker.stop()
