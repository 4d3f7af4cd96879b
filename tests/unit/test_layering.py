"""The layering contract (tests/support/layers.py) holds, and the checker itself catches a breach.

Run in CI with the rest of the suite: a lower stage importing a higher one, two sibling stages
depending on each other, or an import cycle fails here with the file and line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.layers import LAYERS, check, imports, layer_of
from tests.support.paths import REPO


def test_agent_and_handlers_keep_the_layering_contract() -> None:
    violations = check(REPO)
    assert not violations, "\n".join(map(str, violations))


def test_every_module_belongs_to_a_layer() -> None:
    for package in ("agent", "handlers"):
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            assert layer_of(module) is not None, f"{module} is in no layer of {LAYERS}"


def test_the_checker_sees_real_imports() -> None:
    found = {name for name, _line in imports(REPO / "agent" / "jobs" / "pipeline.py", REPO)}
    assert any(name.startswith("agent.engines") for name in found), found


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in ("agent", "handlers"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_deliberate_upward_import_fails(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    clip = root / "agent" / "audio" / "clip.py"
    clip.write_text(clip.read_text() + "\nfrom agent.app import App  # upward on purpose\n")
    violations = check(root)
    assert ("agent.audio.clip", "agent.app", "a lower layer imports a higher one") in [
        (v.importer, v.imported, v.why) for v in violations]
    assert all(v.importer == "agent.audio.clip" for v in violations), violations   # nothing else


def test_sibling_stages_and_cycles_fail(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "agent" / "ops" / "zz_a.py").write_text("from agent.sources import zz_b\n")
    (root / "agent" / "sources" / "zz_b.py").write_text("import agent.ops.zz_c\n")
    (root / "agent" / "ops" / "zz_c.py").write_text("from agent.ops import zz_a\n")
    whys = {(v.importer, v.why.split(":")[0]) for v in check(root)}
    assert ("agent.ops.zz_a", "sibling layers depend on each other") in whys
    assert any(why == "import cycle" for _importer, why in whys), whys
