"""The allowed-commands list and remote_config hold for any request a running agent gets."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


COMMANDS = ["ping", "state", "stats", "config/get", "config/set", "config/reset", "pause", "resume", "transcribe",
            "restart", "log_level",
            "summarize"]
bodies = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from(["config", "text", "file", "audio_b64", "summarize", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                              st.dictionaries(st.sampled_from(["jobs", "mqtt"]),
                                              st.dictionaries(st.sampled_from(["max_concurrent", "remote_config"]),
                                                              st.one_of(st.integers(0, 4), st.booleans()))),
                              ), max_size=3),
)


def test_allowed_commands_and_remote_config_hold_for_any_request(make_agent, probe):
    agent = make_agent({"mqtt": {"allowed_commands": ["ping", "config/set", "config/reset"],
                                 "remote_config": False}}).start(probe)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(command=st.one_of(st.sampled_from(COMMANDS), st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True)),
           body=bodies)
    def check(command, body):
        answer = probe.request(agent.root, command, body)
        if command == "ping" and answer["status"] == "ok":
            return
        assert answer["status"] == "error", (command, body, answer)
        code = answer["error"]["code"]
        if command in ("config/set", "config/reset"):
            assert code in ("forbidden", "bad_request"), (command, body, answer)
        elif command == "ping":
            assert code == "bad_request"
        elif command in COMMANDS:
            assert code == "forbidden", (command, answer)
        else:
            assert code in ("unknown_command", "forbidden"), (command, answer)

    check()
    overlay = agent.workdir / "state" / "config-overlay.yaml"
    assert not overlay.exists(), "a remote config change got through"
    assert probe.request(agent.root, "ping")["status"] == "ok"
