"""A fake microphone for machines without a sound card: ALSA's `file` plugin.

Why: PyAudio must be tested through the real PortAudio/ALSA stack, not a mock, but CI has no
capture hardware. ALSA reads `~/.asoundrc`, so a temporary HOME holding one that routes the
default capture device to a raw S16_LE file makes that file the microphone of any process
started with the returned environment. Two properties of the plugin matter to tests (see
../shared/models/README.md): reads are not paced to real time, and past the end of the file
old buffer data repeats, so pad the file with silence and read no more than its length.
The variables only affect child processes: ALSA reads its configuration once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

ASOUNDRC = """\
pcm.filemic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.!default {{
    type asym
    capture.pcm "filemic"
    playback.pcm "null"
}}
ctl.!default {{
    type hw
    card 0
}}
"""


def fake_microphone_env(home: Path, raw_file: Path) -> dict[str, str]:
    """Write `<home>/.asoundrc` capturing from `raw_file`; return the environment for a child.

    `raw_file` must hold 16-bit little-endian mono PCM at the rate the stream is opened with.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    raw = Path(raw_file).resolve()
    if '"' in str(raw):
        raise ValueError(f"unsupported character in {raw}")
    (home / ".asoundrc").write_text(ASOUNDRC.format(infile=raw))
    env = dict(os.environ)
    env["HOME"] = str(home)
    env.pop("ALSA_CONFIG_PATH", None)  # a custom global config would bypass ~/.asoundrc
    # PortAudio also probes JACK; stop it from trying to start a server.
    env["JACK_NO_START_SERVER"] = "1"
    return env
