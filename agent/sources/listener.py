"""Live listening: one capture thread turns an audio source into VAD events and spooled segments.

    source.read (30 ms blocks) -> WakeGate (noise, wake word, gain) -> Segmenter.feed
        -> event/vad + <spool>/<segment_id>.wav          (event/wake when a wake word is heard)

The thread owns the source and the segmenter; other threads only flip flags and `poke()`.
Each finished segment is written atomically as a 16 kHz mono WAV into the spool folder, where a
second InboxWorker (kind "mic") takes it like an inbox file, so segments wait on disk under load
and survive a restart. Nothing here blocks on the network: events go to the durable outbox.

Pausing (or critical memory) closes a microphone stream, so a paused agent holds no device and
spends nothing; a pipe or a WAV file keeps being read and its audio is discarded, so a writer
never blocks and resuming picks up live audio. A device that fails is alerted once and retried
with a doubling backoff until it delivers audio again, which clears the alert.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from agent.audio.capture import TARGET_RATE, AudioSource, EndOfStream, open_source
from agent.audio.segmenter import Event, Segmenter, SpeechEnd, SpeechStart
from agent.audio.vad import FrameClassifier, VadCache
from agent.audio.wav import write_wav
from agent.errors import AgentError
from agent.settings import ListenSettings, VADSettings
from agent.sources.segment_names import segment_file
from agent.sources.wake_gate import WakeGate

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 1.0  # a read that waits this long is a quiet pipe or a stalled device: look again
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0


class Listener:
    def __init__(self, listen: ListenSettings, vad: VADSettings, spool: Path, *,
                 source: dict[str, Any] | None, emit: Callable[[str, dict], None],
                 wanted: Callable[[], bool], on_change: Callable[[], None],
                 raise_alert: Callable[[str, str, dict], None], clear_alert: Callable[[str], None],
                 cache: VadCache | None = None, divert: Callable[[Any], bool] | None = None) -> None:
        """`divert(samples)` may take a finished utterance instead of the spool (the Wyoming satellite
        sends it to Home Assistant); it returns True when it took it."""
        self.listen, self.vad, self.spool = listen, vad, Path(spool)
        self._divert = divert
        self.spec = source or {"kind": "mic"}
        self.kind = self.spec["kind"]
        self.read_samples = max(1, TARGET_RATE * listen.read_ms // 1000)
        self.cache = cache if cache is not None else VadCache(vad.cache_size)
        self._emit, self._wanted, self._on_change = emit, wanted, on_change
        self._raise_alert, self._clear_alert = raise_alert, clear_alert
        self._cond = threading.Condition()
        self._stopping = False
        self._active = False
        self._alerted = False
        self._backoff = RETRY_MIN_S
        self.state = "starting"  # starting | listening | paused | failed | ended | stopped
        self.source: AudioSource = self._make_source()
        self._seg: Segmenter | None = None
        self._gate: WakeGate | None = None   # built when listening starts (loads the wake models)
        self._last_gate_stats: dict[str, Any] = {"mode": listen.mode}
        self._seg_offset = 0  # samples read before the current segmenter started
        self.samples_read = 0
        self.segments = 0
        self.spooled = 0
        self.spool_errors = 0
        self.capture_errors = 0
        self.last_error: str | None = None
        self._last_seg_stats: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)

    # --- control (any thread) ------------------------------------------------------------

    def start(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing; an open segment is ended and spooled first."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poke(self) -> None:
        """Paused, resumed, memory level changed: re-check whether to capture."""
        with self._cond:
            self._cond.notify_all()

    @property
    def active(self) -> bool:
        """Capturing and analysing right now (not paused, not failed, not ended)."""
        return self._active

    def stats(self) -> dict[str, Any]:
        src = self.source.stats()
        seg = self._seg
        return {"state": self.state, "source": src.get("source", self.source.name),
                "overruns": src.get("overruns", 0), "capture": src,
                "stream_s": round(self.samples_read / TARGET_RATE, 3), "segments": self.segments,
                "spooled": self.spooled, "spool_errors": self.spool_errors,
                "capture_errors": self.capture_errors, "last_error": self.last_error,
                "vad": seg.stats() if seg is not None else self._last_seg_stats,
                "wake": self._gate.stats() if self._gate is not None else self._last_gate_stats}

    # --- the capture thread --------------------------------------------------------------

    def _make_source(self) -> AudioSource:
        if self.kind == "wav":
            return open_source("wav", self.listen, path=self.spec["path"], realtime=self.spec.get("realtime", True))
        return open_source(self.kind, self.listen)

    def _should_capture(self) -> bool:
        return not self._stopping and self._wanted()

    def _run(self) -> None:
        while True:
            if self.kind == "mic" and not self._should_capture():
                self._set_state("paused")   # a paused microphone stays closed until wanted again
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping or self._wanted())
            if self._stopping:
                break
            try:
                self.source.start()
                if self._capture():
                    self._set_state("ended")
                    log.info("listening: %s ended after %.1f s", self.source.name, self.samples_read / TARGET_RATE)
                    break
            except Exception as exc:   # CaptureError above all; anything else is retried the same way
                if not isinstance(exc, AgentError):
                    log.exception("listening: %s failed", self.source.name)
                self._failed(exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=self._backoff)
                self._backoff = min(self._backoff * 2, RETRY_MAX_S)
            finally:
                self._stop_source()
        if self.state != "ended":
            self._set_state("stopped")

    def _capture(self) -> bool:
        """Read, analyse, spool until paused or stopped (False) or the source ends (True)."""
        delivered = False
        try:
            while not self._stopping:
                wanted = self._should_capture()
                if not wanted and self.kind == "mic":
                    return False
                if wanted and self._gate is None:
                    self._open_gate()
                    self._set_state("listening")
                elif not wanted and self.state != "paused":   # a pipe or file is read and discarded
                    self._close_gate()
                    self._set_state("paused")
                try:
                    frame = self.source.read(self.read_samples, READ_TIMEOUT_S)
                except EndOfStream:
                    return True
                if frame is None:
                    continue
                if not delivered:
                    delivered = True
                    self._recovered()   # the source works (again)
                if self._gate is not None:
                    self._analyse(self._gate, frame)
                self.samples_read += len(frame)
            return False
        finally:
            self._close_gate()

    def _analyse(self, gate: WakeGate, frame: Any) -> None:
        audio, heard, woke = gate.process(frame)
        if woke is not None:
            self._emit("wake", {"model": woke.model, "probability": woke.probability, "source": self.source.name,
                                "at_s": round(self.samples_read / TARGET_RATE + len(frame) / TARGET_RATE, 3)})
            self._open_segmenter(self.samples_read + len(frame))   # only audio after the wake
            return
        if audio is None or self._seg is None:
            return
        for event in self._seg.feed(audio, heard if heard is not audio else None):
            self._on_event(event)
            if gate.gated and isinstance(event, SpeechEnd):   # the command is this one utterance
                self._last_seg_stats = self._seg.stats()
                self._seg = None
                gate.end_command()
                return
        if gate.command_over:
            self._close_segmenter()
            gate.end_command()

    def _open_gate(self) -> None:
        self._gate = WakeGate(self.listen)
        if not self._gate.gated:
            self._open_segmenter(self.samples_read)

    def _close_gate(self) -> None:
        self._close_segmenter()
        gate, self._gate = self._gate, None
        if gate is not None:
            self._last_gate_stats = gate.stats()
            gate.close()

    def _open_segmenter(self, offset: int) -> None:
        v = self.vad
        if self._gate is not None and self._gate.gated:   # a command never outlasts command_max_s
            v = replace(v, max_segment_s=min(v.max_segment_s, self.listen.command_max_s))
        classifier = FrameClassifier(v.aggressiveness, v.frame_ms, v.energy_margin_db, TARGET_RATE, cache=self.cache)
        self._seg = Segmenter(v, TARGET_RATE, classifier=classifier)
        self._seg_offset = offset

    def _close_segmenter(self) -> None:
        """End an open segment (its speech_start was published, so its speech_end must be too)."""
        seg, self._seg = self._seg, None
        if seg is not None:
            for event in seg.flush():
                self._on_event(event)
            self._last_seg_stats = seg.stats()

    def _stop_source(self) -> None:
        try:
            self.source.stop()
        except Exception:   # stopping a vanished device must never kill the thread
            log.exception("listening: stopping %s failed", self.source.name)
        self._set_active(False)

    def _on_event(self, event: Event) -> None:
        offset = self._seg_offset / TARGET_RATE
        if isinstance(event, SpeechStart):
            self._emit("vad", {"event": "speech_start", "segment_id": event.segment_id, "source": self.source.name,
                               "start_s": round(offset + event.start_s, 3)})
            return
        assert isinstance(event, SpeechEnd)
        self.segments += 1
        wake = self._gate.wake if self._gate is not None else None
        name = segment_file(event.segment_id, wake and {"model": wake.model, "probability": wake.probability})
        assist = self._divert is not None and self._divert(event.samples)
        spooled = not assist
        try:
            if not assist:
                write_wav(self.spool / name, event.samples)   # atomic: the spool never sees half a file
                self.spooled += 1
        except OSError as exc:
            spooled = False
            self.spool_errors += 1
            log.error("listening: cannot spool segment %s: %s", event.segment_id, exc)
        extra = {"assist": True} if assist else {}
        self._emit("vad", {"event": "speech_end", "segment_id": event.segment_id, "source": self.source.name,
                           "start_s": round(offset + event.start_s, 3), "end_s": round(offset + event.end_s, 3),
                           "duration_s": round(event.duration_s, 3), "rms_dbfs": round(event.rms_dbfs, 1),
                           "reason": event.reason, "spooled": spooled, **extra})

    # --- state and alerts ----------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        self._set_active(state == "listening")

    def _set_active(self, active: bool) -> None:
        if active != self._active:
            self._active = active
            log.info("listening %s (%s)", "started" if active else "stopped", self.source.name)
            self._on_change()

    def _failed(self, exc: Exception) -> None:
        self.capture_errors += 1
        self.last_error = message = exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
        self._set_state("failed")
        log.warning("listening: %s; retrying in %.0f s", message, self._backoff)
        if not self._alerted:   # once per outage, not once per retry
            self._alerted = True
            self._raise_alert("capture", "error", {"message": message, "source": self.source.name,
                                                   "device": self.listen.device, "retry_in_s": self._backoff})

    def _recovered(self) -> None:
        self._backoff = RETRY_MIN_S
        if self._alerted:
            self._alerted = False
            self.last_error = None
            log.info("listening: %s delivers audio again", self.source.name)
            self._clear_alert("capture")
