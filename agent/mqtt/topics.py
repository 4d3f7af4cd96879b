"""Every MQTT topic string the agent uses, and nowhere else.

Topic design follows zigbee2mqtt: one root per device, retained facts at fixed names,
events under `event/`, request/response pairs under `request/` and `response/`.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = ("job", "progress", "vad", "transcript", "summary", "alert", "assist", "log", "wake")   # progress, log: QoS 0, never stored


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def config(self) -> str:
        return f"{self.root}/config"

    @property
    def schema(self) -> str:
        """The config file's JSON Schema, retained beside `config` (agent/config/jsonschema.py)."""
        return f"{self.root}/schema"

    @property
    def health(self) -> str:
        """Retained ok / degraded / failing with the reasons (agent/ops/health.py)."""
        return f"{self.root}/health"

    @property
    def telemetry(self) -> str:
        return f"{self.root}/telemetry"

    def event(self, name: str) -> str:
        return f"{self.root}/event/{name}"

    def last(self, name: str) -> str:
        """Retained copy of the latest `name` (transcript, summary, speech, telemetry)."""
        return f"{self.root}/last/{name}"

    def alert(self, kind: str) -> str:
        """Retained current alert of one kind; an empty payload clears it."""
        return f"{self.root}/alert/{kind}"

    def response(self, command: str) -> str:
        return f"{self.root}/response/{command}"

    @property
    def results(self) -> str:
        """Where fleet results and requesters' replies go: `<prefix>/results/<requester>/...`."""
        return f"{self.prefix}/results"

    def reply_allowed(self, topic: object) -> bool:
        """A requester-chosen reply topic (MQTT 5 Response Topic, a fleet job's `reply_to`) the
        device may publish on: below `<prefix>/results/` or this device's own `<root>/response/`,
        never its (or another device's) event, state, config, last or alert topics."""
        if not isinstance(topic, str) or any(c in topic for c in "+#\0") or len(topic.encode("utf-8")) > 65535:
            return False
        return any(topic.startswith(base) and len(topic) > len(base)
                   for base in (f"{self.results}/", f"{self.root}/response/"))

    @property
    def request_filters(self) -> tuple[str, str]:
        return f"{self.root}/request/#", f"{self.fleet_request}/#"

    def command_of(self, topic: str) -> str | None:
        """The command named by a request topic (device or fleet-wide), or None."""
        for base in (f"{self.root}/request/", f"{self.fleet_request}/"):
            if topic.startswith(base) and len(topic) > len(base):
                return topic[len(base):]
        return None

    @property
    def fleet_request(self) -> str:
        """Requests every device takes: one publish reaches the whole fleet, so they are trusted less."""
        return f"{self.prefix}/all/request"

    def is_fleet_wide(self, topic: str) -> bool:
        return topic.startswith(f"{self.fleet_request}/")

    def shared_jobs(self, group: str) -> str:
        return f"$share/{group}/{self.prefix}/jobs/transcribe"

    @property
    def jobs(self) -> str:
        """Where shared transcription jobs are published (workers take them through `shared_jobs`)."""
        return f"{self.prefix}/jobs/transcribe"

    @property
    def offload_results(self) -> str:
        """Where workers answer this device's offloaded jobs (`transcriber.engine: fleet`): under
        `<prefix>/results/`, which every worker may write, and read by this device alone."""
        return f"{self.prefix}/results/{self.device_id}/offload"

    def ha_discovery(self, discovery_prefix: str) -> str:
        return f"{discovery_prefix}/device/{self.device_id}/config"

    @staticmethod
    def ha_status(discovery_prefix: str) -> str:
        return f"{discovery_prefix}/status"
