"""The shipped systemd unit has the settings the agent relies on."""

from __future__ import annotations

from tests.support.paths import REPO


UNIT = REPO / "systemd" / "voice-agent.service"


def test_unit_file_has_the_required_settings() -> None:
    """The settings other parts rely on (sd_notify, the watchdog, exit 78, the inbox path)."""
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for required in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "MemoryMax=400M",
        "DeviceAllow=char-alsa rw",
        "EnvironmentFile=-/etc/voice-agent/env",
    ):
        assert required in lines, required
    assert not any(line.startswith(("MemoryDenyWriteExecute=", "PrivateDevices=")) for line in lines)
