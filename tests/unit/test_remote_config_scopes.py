"""The settings schema declares a scope for every key, and the dangerous ones are local-only."""

from __future__ import annotations

from agent.config.remote import scopes, tunable
from agent.settings import DEVICE, FLEET
from tests.support.settings_schema import LOCAL, settings_field


def test_schema_declares_a_scope_for_every_key_and_the_dangerous_ones_are_local() -> None:
    every = scopes()
    assert set(every) == set(LOCAL) | set(tunable(DEVICE))
    assert set(tunable(FLEET)) < set(tunable(DEVICE))
    for path in every:
        f, annotation = settings_field(path)
        names_something = (f.metadata.get("path") or f.metadata.get("secret") or "list[str]" in str(annotation)
                           and not path.endswith("keywords"))
        if names_something or path.split(".")[-1] in {"host", "port", "url", "base_url", "binary", "model",
                                                      "command", "username", "device_id", "topic_prefix",
                                                      "remote_config", "allowed_commands", "worker", "group",
                                                      "discovery_prefix", "protocol", "device"}:
            assert every[path] is None, f"{path} names a program, file, host or identity but is remote-tunable"
