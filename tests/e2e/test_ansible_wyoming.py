"""The voice_agent role turns Wyoming on with its allow list: its config template, rendered with
the role's defaults and vars, gives a `wyoming` section that `voice-agent check-config` accepts, and
the install gets the `wyoming` extra. (The role applied for real: tests/e2e/test_ansible_roles.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.support.ansible import ANSIBLE_DIR, ROOT, ansible_env, ansible_tool, target_python
from tests.support.agent import voice_agent_cmd

ROLE = ANSIBLE_DIR / "roles" / "voice_agent"


def render(tmp_path: Path, extra: dict) -> tuple[dict, str]:
    """(config.yaml as rendered, the extras suffix pip installs) for these role variables."""
    rendered = tmp_path / "config.yaml"
    suffix = tmp_path / "extras.txt"
    playbook = tmp_path / "render-config.yml"
    playbook.write_text(json.dumps([{
        "name": "Render the config with the role's defaults",
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
        "tasks": [
            {"name": "Render", "ansible.builtin.template": {"src": str(ROLE / "templates" / "config.yaml.j2"),
                                                           "dest": str(rendered), "mode": "0644"}},
            {"name": "Extras", "ansible.builtin.copy": {"content": "{{ __voice_agent_extras_suffix }}",
                                                        "dest": str(suffix), "mode": "0644"}},
        ],
    }]))
    result = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
         "-e", f"ansible_python_interpreter={target_python()}", "-e", json.dumps(extra)],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"rendering failed:\n{result.stdout}\n{result.stderr}"
    return yaml.safe_load(rendered.read_text()), suffix.read_text()


def test_role_turns_wyoming_on_with_its_allow_list(tmp_path: Path) -> None:
    config, extras = render(tmp_path, {
        "voice_agent_mqtt_host": "127.0.0.1", "voice_agent_state_dir": str(tmp_path / "state"),
        "voice_agent_inbox_dir": str(tmp_path / "inbox"),
        "voice_agent_wyoming_enabled": True, "voice_agent_wyoming_bind": "0.0.0.0",
        "voice_agent_wyoming_allow": ["192.168.1.20", "10.0.0.0/24"]})
    assert config["wyoming"] == {"enabled": True, "bind": "0.0.0.0", "port": 10700, "stt_port": 10300,
                                 "allow": ["192.168.1.20", "10.0.0.0/24"]}
    assert extras == "[pocketsphinx,wyoming]"
    (tmp_path / "checked.yaml").write_text(yaml.safe_dump(config))
    checked = subprocess.run([*voice_agent_cmd(), "check-config", str(tmp_path / "checked.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_role_default_keeps_wyoming_off_on_loopback(tmp_path: Path) -> None:
    config, extras = render(tmp_path, {"voice_agent_mqtt_host": "127.0.0.1"})
    assert config["wyoming"]["enabled"] is False and config["wyoming"]["bind"] == "127.0.0.1"
    assert extras == "[pocketsphinx]"


def test_check_config_refuses_an_allow_entry_that_is_no_address(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1"}, "state_dir": str(tmp_path),
                                   "wyoming": {"enabled": True, "allow": ["homeassistant.local"]}}))
    checked = subprocess.run([*voice_agent_cmd(), "check-config", str(bad)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 78 and "wyoming.allow" in checked.stderr, (checked.returncode, checked.stderr)
