"""A bad config at start: exit code 78 with the path and line, from `run` and from `check-config`."""

from __future__ import annotations

import yaml


SECRET = "s3cret-Pa55word"


def test_bad_config_at_start_exits_78_with_path_and_line(make_agent):
    agent = make_agent()
    agent.config_path.write_text("mqtt:\n  port: 70000\n  prot: 5\n")
    agent.start()
    assert agent.proc.wait(timeout=20) == 78
    log = agent.log()
    assert "line 2" in log and "mqtt.port" in log and "did you mean 'port'" in log
    assert "Traceback" not in log


def test_check_config_cli(tmp_path):
    import subprocess
    from tests.support.agent import voice_agent_cmd
    good = tmp_path / "good.yaml"
    good.write_text(f"mqtt:\n  host: broker.local\n  password: {SECRET}\n")
    out = subprocess.run([*voice_agent_cmd(), "check-config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert effective["mqtt"]["password"] == "***" and SECRET not in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  max_concurrent: many\ntelemetry:\n  interval_s: -1\n")
    out = subprocess.run([*voice_agent_cmd(), "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 78
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "line 2" in lines[0] and "jobs.max_concurrent" in lines[0]
    assert "telemetry.interval_s" in lines[1]
    version = subprocess.run([*voice_agent_cmd(), "version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip()
