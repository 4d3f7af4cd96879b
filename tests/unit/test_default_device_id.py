"""The default device id is the hostname plus a stable suffix derived from the machine id."""

from __future__ import annotations

import socket

import pytest

from agent.settings import MACHINE_ID_ENV, default_device_id
from tests.support.machine_id import MACHINE_A, MACHINE_B, machine_id_file


def test_default_device_id_is_hostname_plus_a_stable_machine_suffix(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "raspberrypi")
    monkeypatch.setenv(MACHINE_ID_ENV, str(machine_id_file(tmp_path / "a", MACHINE_A)))
    first = default_device_id()
    assert first == default_device_id(), "stable across calls (and restarts)"
    monkeypatch.setenv(MACHINE_ID_ENV, str(machine_id_file(tmp_path / "b", MACHINE_B)))
    second = default_device_id()
    assert first != second
    for device_id in (first, second):
        name, suffix = device_id.rsplit("-", 1)
        assert name == "raspberrypi" and len(suffix) == 6 and int(suffix, 16) >= 0
        assert MACHINE_A[:6] not in suffix and MACHINE_B[:6] not in suffix   # the id itself is not exposed
    monkeypatch.setenv(MACHINE_ID_ENV, str(machine_id_file(tmp_path / "c", "uninitialized")))
    assert default_device_id() == "raspberrypi", "no usable machine id: the hostname alone"
    monkeypatch.setattr(socket, "gethostname", lambda: "x" * 63)
    monkeypatch.setenv(MACHINE_ID_ENV, str(machine_id_file(tmp_path / "d", MACHINE_A)))
    assert len(default_device_id()) <= 64


@pytest.fixture(autouse=True)
def _no_real_machine_id(monkeypatch, tmp_path):
    """Agents in these tests never read the real /etc/machine-id."""
    monkeypatch.setenv(MACHINE_ID_ENV, str(tmp_path / "no-machine-id"))
