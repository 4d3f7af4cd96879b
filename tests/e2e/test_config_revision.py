"""The config revision is stable across processes (another interpreter, another hash seed) and changes with the settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.config import load_yaml_text, parse_settings, revision
from agent.settings import Settings

from tests.support.paths import REPO


def parse(text: str, *, base_dir: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    data, lines = load_yaml_text(textwrap.dedent(text))
    return parse_settings(data, lines=lines, base_dir=base_dir or Path("/base"), environ=environ or {})


def test_revision_is_stable_and_changes(tmp_path: Path) -> None:
    text = "device_id: dev1\nstate_dir: /var/lib/voice\nmqtt:\n  password: a\n"
    first = parse(text)
    rev = revision(first)
    assert re.fullmatch(r"[0-9a-f]{12}", rev)
    assert revision(parse(text)) == rev
    assert revision(parse(text.replace("password: a", "password: b"))) != rev  # secrets count (unredacted)
    # ...but only through the per-device key: without it a published revision cannot test a guess
    assert revision(first, b"device-key") != rev
    assert revision(parse(text.replace("password: a", "password: b")), b"device-key") != revision(first, b"device-key")
    assert revision(parse(text + "jobs:\n  cache_size: 1\n")) != rev
    code = ("import sys; from pathlib import Path; from agent.config import *; "
            "d, l = load_yaml_text(sys.argv[1]); "
            "print(revision(parse_settings(d, base_dir=Path('/base'), environ={})))")
    other = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True,
                           cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == rev
