"""What MQTT commands may do to the running agent (the `AgentContext` the handlers see).

Kept apart from the composition root so handlers depend on a narrow surface, not on every part.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import ConfigError, settings_to_dict
from agent.config.remote import tunable
from agent.config.store import RemoteForbidden
from agent.errors import AgentError, RequestError
from agent.sources.inbox import is_candidate_name
from agent.sources.inbox_worker import load_audio_file
from agent.jobs.pipeline import Loaded, Source
from agent.settings import DEVICE, FLEET

if TYPE_CHECKING:
    from agent.app import App


class Control:
    def __init__(self, app: App) -> None:
        self.app = app

    # --- facts ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        app = self.app
        return {"device_id": app.settings.device_id, "version": __version__, "started_at": app.started_at,
                "uptime_s": app.uptime_s(), "paused": app.paused, "listening": app.listening,
                "jobs": {"running": app.slot.running, "limit": app.slot.limit},
                "engines": app.engines.describe(), "config_revision": app.store.revision,
                "memory_level": app.monitor.level,
                # the budget levels are computed against and which limit sets it (machine or cgroup);
                # usage figures are in telemetry, so the retained state does not change every sample
                "memory": {k: v for k, v in app.monitor.budget().items() if k in ("budget_mb", "limit_source")},
                # kind -> level of every current alert: retained, so Home Assistant's problem sensors
                # have a value after a restart (a cleared `alert/<kind>` leaves nothing retained)
                "alerts": {kind: body.get("level") for kind, body in list(app.alerts.items())}}

    def stats(self) -> dict[str, Any]:
        app = self.app
        d = app.dispatcher.stats
        inbox = app.inbox
        # The one builder of both `request/stats` answers and `<root>/telemetry` (App._maybe_telemetry).
        figures = app.telemetry.collect({"uptime_s": app.uptime_s(), "memory_level": app.monitor.level,
                                         "alerts": sorted(app.alerts)})
        return {
            **figures,
            "jobs": {"done": app.pipeline.done, "failed": app.pipeline.failed, "rejected": app.rejected,
                     "running": app.slot.running, "limit": app.slot.limit},
            "requests": {"total": d.requests, "errors": d.errors, "busy": d.busy},
            "inbox": {"waiting": inbox.inbox.waiting_count() if inbox else 0},
            "listen": app.listener_stats(),
            "fleet": app.fleet.stats(),
            "outbox": {"queued": app.outbox.count, "bytes": app.outbox.size_bytes, "stored": app.outbox.stored,
                       "published": app.publisher.published, "dropped": app.outbox.dropped},
            "caches": {"config": {"hits": app.store.hits, "misses": app.store.misses},
                       "transcripts": app.pipeline.transcripts.stats(),
                       "summaries": app.pipeline.summaries.stats(), "vad": app.vad_cache_stats()},
        }

    # --- config --------------------------------------------------------------------------

    def config_get(self) -> dict[str, Any]:
        """The effective config, and which keys config/set may change from where (Node-RED and
        Home Assistant users see the rules without reading the source)."""
        return {"config": settings_to_dict(self.app.settings, redact=True), "revision": self.app.store.revision,
                "remote_tunable": tunable(DEVICE), "fleet_tunable": tunable(FLEET)}

    def config_set(self, partial: dict[str, Any], scope: str = DEVICE) -> dict[str, Any]:
        self._remote_config_allowed(scope)
        try:
            new = self.app.store.set_overlay(partial, scope)
        except RemoteForbidden as exc:
            where = "the fleet-wide topic" if scope == FLEET else "MQTT"
            raise RequestError(f"{', '.join(exc.paths)}: cannot be changed over {where}; "
                               "only the local config file may set it; nothing was changed",
                               code="forbidden", keys=exc.paths) from None
        except ConfigError as exc:
            raise _invalid(exc) from None
        except OSError as exc:   # disk full, read-only state_dir: the old overlay is untouched
            raise RequestError(f"cannot save the config change: {exc.strerror or exc}; nothing was changed",
                               code="storage_error") from None
        return self._applied(new)

    def config_reset(self, scope: str = DEVICE) -> dict[str, Any]:
        self._remote_config_allowed(scope)
        try:
            new = self.app.store.reset_overlay()
        except ConfigError as exc:
            raise _invalid(exc) from None
        return self._applied(new)

    def _remote_config_allowed(self, scope: str) -> None:
        settings = self.app.settings
        if not settings.mqtt.remote_config:
            raise RequestError("remote config changes are disabled (mqtt.remote_config: false)", code="forbidden")
        if scope == FLEET and not settings.fleet.remote_config:
            raise RequestError("fleet-wide config changes are disabled (fleet.remote_config: false)",
                               code="forbidden")

    def _applied(self, new: Any) -> dict[str, Any]:
        restarted = self.app.apply(new)
        return {"revision": self.app.store.revision, "restarted": restarted, "restart_needed": bool(restarted)}

    # --- control -------------------------------------------------------------------------

    def set_paused(self, paused: bool) -> dict[str, Any]:
        self.app.set_paused(paused)
        return {"paused": paused, "listening": self.app.listening}

    def set_listening(self, on: bool) -> dict[str, Any]:
        """The microphone only; pause / resume stop and restart all work."""
        if self.app.listener is None:
            raise RequestError("no microphone is configured (listen.enabled: false); pause and resume "
                               "stop and restart all work", code="bad_request")
        self.app.set_listening(on)
        return {"paused": self.app.paused, "listening": self.app.listening}

    # --- heavy work (already holding a job slot) -----------------------------------------

    def transcribe_request(self, body: dict[str, Any], job_id: str) -> dict[str, Any]:
        app = self.app
        summarize = body.get("summarize", True)
        if "file" in body:
            return self._transcribe_file(body["file"], job_id, summarize)
        data = _b64(body["audio_b64"])

        def loaded() -> Loaded:
            from agent.audio.wav import decode_bytes  # numpy: loaded with the first audio

            return Loaded(decode_bytes(data, max_bytes=app.settings.inbox.max_bytes,
                                       max_duration_s=app.settings.inbox.max_duration_s),
                          hashlib.blake2b(data, digest_size=16).hexdigest())
        record = app.pipeline.run(job_id, Source("request", "audio_b64"), loaded, summarize=summarize)
        return _result(record)

    def _transcribe_file(self, name: str, job_id: str, summarize: bool) -> dict[str, Any]:
        worker = self.app.inbox
        if worker is None:
            raise RequestError("the inbox is disabled", code="bad_request")
        inbox = worker.inbox
        if name != os.path.basename(name) or not is_candidate_name(name) or "\x00" in name:
            raise RequestError("'file' must name a file in the inbox folder", code="forbidden")
        path = inbox.path / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise RequestError(f"no file '{name[:200]}' is waiting in the inbox", code="not_found") from None
        except (OSError, ValueError):   # e.g. ENAMETOOLONG: no such name can be in the inbox
            raise RequestError("'file' must name a file in the inbox folder", code="forbidden") from None
        if not stat.S_ISREG(st.st_mode):
            raise RequestError("'file' must be a regular file inside the inbox (no symlinks)", code="forbidden")
        claimed = inbox.claim(name)
        if claimed is None:
            raise RequestError(f"'{name}' was taken by another job", code="not_found")
        try:
            record = self.app.pipeline.run(job_id, Source("request", name),
                                           lambda: load_audio_file(claimed.path, inbox.settings),
                                           summarize=summarize)
        except AgentError as exc:
            inbox.finish(claimed, {"job_id": job_id, **exc.as_dict()}, ok=False)
            raise
        inbox.finish(claimed, record, ok=True)
        return _result(record)

    def summarize_request(self, text: str, job_id: str) -> dict[str, Any]:
        pipeline = self.app.pipeline
        source = {"kind": "request", "name": "summarize"}
        pipeline.job_event(job_id, "running", source)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            summary = pipeline.summarize_text(text, timings)
        except AgentError as exc:
            pipeline.job_event(job_id, "failed", source, error=exc.as_dict())
            raise
        timings["total"] = round((time.monotonic() - t0) * 1000, 1)
        pipeline.job_event(job_id, "done", source, timings_ms=timings)
        return {"job_id": job_id, "text": summary.text if summary else "",
                "engine": summary.engine if summary else None, "timings_ms": timings}


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'audio_b64' is not valid base64", code="bad_request") from None


def _result(record: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": record["job_id"], "text": record["transcript"], "language": record["language"],
            "audio_s": record["audio_s"], "summary": record["summary"], "engines": record["engines"],
            "timings_ms": record["timings_ms"]}


def _invalid(exc: ConfigError) -> RequestError:
    errors = [{"path": p.path, "message": p.message, **({"line": p.line} if p.line else {})} for p in exc.problems]
    return RequestError("; ".join(f"{p.path}: {p.message}" for p in exc.problems), code="invalid_config",
                        errors=errors)
