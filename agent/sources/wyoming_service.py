"""The Wyoming feature as one part the app builds, starts, reconfigures and stops.

It makes the server (agent/sources/wyoming_server.py) with its roles from the settings, answers
`describe` with what the device is (its transcriber, its name from the device id), advertises it
(agent/sources/wyoming_zeroconf.py), and takes the listener's utterances for the satellite
(`offer`). Settings are pushed in (`reconfigure`); a change of the `wyoming` section rebinds.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.settings import Settings

log = logging.getLogger(__name__)

ATTRIBUTION = ("voice-agent", "https://github.com/voice-agent/voice-agent")


class WyomingService:
    def __init__(self, settings: Settings, *, admission: Admission, runner: Runner,
                 emit: Callable[[str, dict], None], microphone: bool, version: str) -> None:
        self._settings = settings
        self._admission, self._runner, self._emit = admission, runner, emit
        self._microphone, self._version = microphone, version
        self._server: Any = None

    # --- what Home Assistant is told -------------------------------------------------------

    def _name(self) -> str:
        return f"voice-agent {self._settings.device_id}"

    def _attribution(self) -> Any:
        from wyoming.info import Attribution
        return Attribution(name=ATTRIBUTION[0], url=ATTRIBUTION[1])

    def asr_info(self) -> Any:
        """The speech-to-text port's `info`: asr, and wake when a wake word is configured (the
        same port serves both; agent/sources/wyoming_wake.py)."""
        from wyoming.info import AsrModel, AsrProgram, Info

        from agent.sources.wyoming_wake import wake_program

        t, wake = self._settings.transcriber, self._settings.listen.wake_word
        model = AsrModel(name=t.engine, attribution=self._attribution(), installed=True,
                         description=f"{t.engine} on {self._settings.device_id}", version=None,
                         languages=[t.language])
        return Info(asr=[AsrProgram(name=self._name(), attribution=self._attribution(), installed=True,
                                    description="voice-agent speech-to-text", version=self._version,
                                    models=[model])],
                    wake=[wake_program(wake, self._attribution(), self._name(), self._version)]
                    if wake.models else []).event()

    def satellite_info(self) -> Any:
        from wyoming.info import Info, Satellite

        return Info(satellite=Satellite(name=self._name(), attribution=self._attribution(), installed=True,
                                        description="voice-agent satellite", version=self._version)).event()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        w = self._settings.wyoming
        if not w.enabled:
            return
        try:
            from agent.sources.wyoming_server import WyomingServer
            import wyoming  # noqa: F401  (the extra: pip install .[wyoming])
        except ImportError:
            log.error("wyoming.enabled is set but the wyoming package is not installed (pip install .[wyoming])")
            return
        from agent.sources.wyoming_asr import AsrSession
        from agent.sources.wyoming_satellite import SatelliteSession
        from agent.sources.wyoming_wake import WakeOrAsrSession
        from agent.sources.wyoming_zeroconf import advertise

        sessions: dict[str, tuple[int, Callable[[Any], Any]]] = {}
        if w.stt_port is not None:
            asr = partial(AsrSession, admission=self._admission, runner=self._runner,
                          inbox=lambda: self._settings.inbox, info=self.asr_info)
            sessions["stt"] = (w.stt_port, lambda conn: WakeOrAsrSession(
                conn, asr=asr(conn), wake=lambda: self._settings.listen.wake_word, info=self.asr_info))
        if self._microphone:
            sessions["satellite"] = (w.port, partial(SatelliteSession, emit=self._emit, info=self.satellite_info,
                                                     output_device=w.output_device))
        if not sessions:
            log.info("wyoming: nothing to serve (no microphone and wyoming.stt_port is null)")
            return
        device_id = self._settings.device_id
        self._server = WyomingServer(bind=w.bind, allow=w.allow, sessions=sessions,
                                     advertise=partial(advertise, device_id, w.bind) if w.zeroconf else None)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reconfigure(self, settings: Settings, microphone: bool) -> list[str]:
        """New settings; the listeners are rebound when the `wyoming` section, the device id or the
        microphone changed (they are what Home Assistant was told)."""
        old, self._settings = self._settings, settings
        if (old.wyoming, old.device_id, self._microphone) == (settings.wyoming, settings.device_id, microphone):
            return []
        self._microphone = microphone
        self.stop()
        self.start()
        return ["wyoming"]

    # --- the listener's utterances ---------------------------------------------------------

    def offer(self, samples: Any) -> bool:
        """An utterance (16 kHz mono int16) from the listener thread: True when the satellite sends
        it to Home Assistant, False when it should be spooled as usual."""
        server = self._server
        session = server.session("satellite") if server is not None else None
        if session is None or not session.ready:
            return False
        return server.call(session.stream(samples.astype("<i2").tobytes()))
