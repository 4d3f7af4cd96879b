"""`_wyoming._tcp` over mDNS, so Home Assistant offers the device under Settings → Devices (optional).

The service names come from the device id (`voice-agent-<device_id>-<role>`), so they survive
restarts and Home Assistant keeps its config entries. Nothing is advertised when the listeners
are bound to loopback (no other machine could connect), and without the `zeroconf` package the
device is added by address instead (docs/home-assistant.md); each case says so in one log line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_TARGET_IP = "224.0.0.251"


def service_name(device_id: str, role: str) -> str:
    return f"voice-agent-{device_id}-{role}.{SERVICE_TYPE}"


def _address(bind: str) -> str:
    """The address other machines reach: the bound one, or the one the default route leaves by."""
    if not ipaddress.ip_address(bind).is_unspecified:
        return bind
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((MDNS_TARGET_IP, 1))   # no packet is sent: this only picks the route
        return probe.getsockname()[0]


class Advertisement:
    def __init__(self, zc: Any, infos: list[Any]) -> None:
        self._zc, self._infos = zc, infos

    def close(self) -> None:
        for info in self._infos:
            self._zc.unregister_service(info)
        self._zc.close()


def advertise(device_id: str, bind: str, ports: dict[str, int]) -> Advertisement | None:
    if ipaddress.ip_address(bind).is_loopback:
        log.info("wyoming: not advertised over zeroconf (bound to loopback %s; set wyoming.bind)", bind)
        return None
    try:
        from zeroconf import ServiceInfo, Zeroconf
    except ImportError:
        log.info("wyoming: not advertised over zeroconf (the zeroconf package is not installed: "
                 "pip install .[wyoming]); add the device by address")
        return None
    try:
        address = _address(bind)
        zc = Zeroconf()
        infos = [ServiceInfo(SERVICE_TYPE, service_name(device_id, role), port=port,
                             parsed_addresses=[address], properties={"role": role})
                 for role, port in ports.items()]
        for info in infos:
            zc.register_service(info)
    except Exception as exc:   # no multicast route, a name clash: Home Assistant can still add it by address
        log.warning("wyoming: zeroconf advertisement failed: %s", exc)
        return None
    log.info("wyoming: advertised %s at %s", ", ".join(i.name for i in infos), address)
    return Advertisement(zc, infos)
