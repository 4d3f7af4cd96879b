"""The outbox's group commit, counted with strace: lazy puts cost no fsync, a durable put one.

A power cut cannot be staged; what makes the lazy puts safe can be counted: a durable put
fsyncs the WAL, which holds every lazy commit before it (agent.mqtt.outbox). Compare
tests/e2e/test_power_loss_durability.py (a durable put costs at least one fsync each).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PUTS = """
import sys
from pathlib import Path
from agent.mqtt.outbox import Outbox
o = Outbox(Path(sys.argv[1]), max_messages=10000, max_bytes=10**8)
o.put("t/event/job", b"{}")                       # the table and the first commit, as in every run
for i in range(int(sys.argv[2])):
    o.put("t/event/transcript", b"x" * 300, durable=False)
if sys.argv[3] == "1":
    o.put("t/event/job", b"{}", durable=True)
o.close()
print("stored")
"""


def _fsyncs(tmp_path: Path, lazy: int, durable_last: bool) -> int:
    db = tmp_path / f"outbox-{lazy}-{int(durable_last)}.sqlite3"
    out = subprocess.run(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", sys.executable, "-c", PUTS,
                          str(db), str(lazy), "1" if durable_last else "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and "stored" in out.stdout, out.stderr[-2000:]
    return sum(int(line.split()[3]) for line in out.stderr.splitlines()
               if line.split() and line.split()[-1] in ("fsync", "fdatasync"))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (scripts/setup-system --test)")
def test_lazy_puts_cost_no_fsync_and_the_durable_put_after_them_does(tmp_path):
    base = _fsyncs(tmp_path, 0, False)
    lazy = _fsyncs(tmp_path, 30, False)
    closed = _fsyncs(tmp_path, 30, True)
    assert lazy - base <= 1, f"30 lazy puts cost {lazy - base} fsyncs (a checkpoint at close may cost one)"
    assert closed - lazy >= 1, "the durable put after the lazy ones was not fsynced"
