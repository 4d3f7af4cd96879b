"""Real psutil samples: the agent's memory counts a child engine process."""

from __future__ import annotations

import subprocess
import sys

from agent.ops.sampling import sample_memory


ALLOCATE = (
    "import sys\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1  # touch every page so it is resident\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_sample_memory_counts_a_child_engine() -> None:
    child = subprocess.Popen([sys.executable, "-c", ALLOCATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", "child allocated its 200 MB"
        memory = sample_memory()
        assert memory.children_rss_mb >= 150, memory
        assert memory.agent_rss_mb > 10
        assert 0 < memory.used_percent <= 100 and memory.available_mb > 0
        assert set(memory.top_process) == {"pid", "name", "rss_mb"}
        assert memory.top_process["rss_mb"] >= 150
    finally:
        child.communicate(timeout=10)
    assert sample_memory().children_rss_mb < 150
