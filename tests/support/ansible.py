"""Running the Ansible roles from tests: the tools from .cache/ansible-venv, site.yml with extra vars,
the PLAY RECAP counters, and the interpreter Ansible runs modules with here.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

ROOT = REPO
ANSIBLE_DIR = ROOT / "ansible"
ANSIBLE_VENV_BIN = ROOT / ".cache" / "ansible-venv" / "bin"
INSTALL_HINT = (
    "python3 -m venv .cache/ansible-venv && "
    ".cache/ansible-venv/bin/pip install 'ansible-core>=2.19,<2.20' ansible-lint"
)


def ansible_tool(name: str) -> str:
    """The tool from .cache/ansible-venv, else from PATH; a missing tool fails (not skips) the test."""
    candidate = ANSIBLE_VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found in {ANSIBLE_VENV_BIN} nor on PATH; install it with: {INSTALL_HINT}")


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    tool_dir = str(Path(ansible_tool("ansible-playbook")).parent)
    env["PATH"] = tool_dir + os.pathsep + env.get("PATH", "")
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
    )
    return env


def target_python() -> str:
    """The interpreter Ansible runs modules with on this machine: the system one, as on a Pi,
    when it has what the pip module needs (packaging or setuptools); else Ansible's own."""
    probe = "import importlib.util as u, sys; sys.exit(not (u.find_spec('packaging') or u.find_spec('pkg_resources')))"
    if Path("/usr/bin/python3").exists() and subprocess.run(
        ["/usr/bin/python3", "-c", probe], capture_output=True, timeout=30
    ).returncode == 0:
        return "/usr/bin/python3"
    ansible_python = Path(ansible_tool("ansible-playbook")).with_name("python")
    return str(ansible_python) if ansible_python.exists() else sys.executable


def run_playbook(tmp: Path, inventory: Path, extra_vars: dict[str, Any], *args: str,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """ansible-playbook site.yml with extra vars from a JSON file; the whole output goes to stdout."""
    vars_file = tmp / f"vars-{time.monotonic_ns()}.json"
    vars_file.write_text(json.dumps(extra_vars))
    return subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", str(inventory), str(ANSIBLE_DIR / "site.yml"),
         "-e", f"@{vars_file}", *args],
        cwd=ROOT, env=ansible_env(tmp), capture_output=True, text=True, timeout=timeout,
    )


def recap(result: subprocess.CompletedProcess, host: str = "localhost") -> dict[str, int]:
    """The PLAY RECAP counters of one host; fails with the output when the run failed."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"ansible-playbook exited {result.returncode}:\n{output[-6000:]}"
    match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", result.stdout, re.MULTILINE)
    assert match, f"no PLAY RECAP line for {host}:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def current_user_group() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def local_broker_inventory(tmp: Path) -> tuple[Path, Path]:
    """An empty target root and an inventory that puts this machine in the `mqtt_broker` group."""
    root = tmp / "root"
    root.mkdir()
    inventory = tmp / "inventory.ini"
    inventory.write_text("[mqtt_broker]\n"
                         f"localhost ansible_connection=local ansible_python_interpreter={target_python()}\n")
    return root, inventory


def local_broker_vars(root: Path, port: int) -> dict[str, Any]:
    """The `mosquitto_broker` role's vars for an unprivileged run into `root`: no packages, no
    service, files owned by the current user, a listener on loopback `port`."""
    user, group = current_user_group()
    return {
        "ansible_become": False,
        "mosquitto_broker_root": str(root),
        "mosquitto_broker_install_packages": False,
        "mosquitto_broker_manage_service": False,
        "mosquitto_broker_file_owner": user,
        "mosquitto_broker_file_group": group,
        "mosquitto_broker_listener_port": port,
        "mosquitto_broker_listener_address": "127.0.0.1",
    }
