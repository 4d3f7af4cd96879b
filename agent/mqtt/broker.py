"""A local Mosquitto on loopback for the demo, when no broker is configured.

A new user gets a working agent with one command; a configured `mqtt.host` never starts one.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import AgentError

log = logging.getLogger(__name__)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AgentError("no free loopback port for the local broker")


class EmbeddedBroker:
    def __init__(self, state_dir: Path, preferred_port: int) -> None:
        self.state_dir = state_dir
        self.preferred_port = preferred_port
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def start(self) -> int:
        """Use a broker already listening on loopback at the configured port (Debian's package
        starts one), else start our own."""
        if _listening(self.preferred_port):
            log.info("mqtt.host is not set: using the broker already listening on 127.0.0.1:%d",
                     self.preferred_port)
            self.port = self.preferred_port
            return self.port
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
        if binary is None:
            raise AgentError("mqtt.host is not set and Mosquitto is not installed: "
                             "install it (apt-get install mosquitto) or set mqtt.host", code="broker_unavailable")
        self.port = free_port(self.preferred_port)
        conf = self.state_dir / "mosquitto-demo.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\n")
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AgentError(f"the local Mosquitto exited with code {self._proc.returncode}",
                                 code="broker_unavailable")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                log.info("started a local Mosquitto on 127.0.0.1:%d (mqtt.host is not set)", self.port)
                return self.port
            except OSError:
                time.sleep(0.02)
        raise AgentError("the local Mosquitto did not start listening", code="broker_unavailable")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
