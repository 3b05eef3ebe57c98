"""The README's layout section matches the files: every module of the hub and the adapters is named
there, every subpackage (room) has its row, and no name in it points at a file that is gone. (The
import order between the rooms is held by import-linter's contracts, run by ``make test``.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reason_plugins", "sae_lens_ext", "vllm_patches", "lm_eval_tasks")


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    return text[start:text.index("\n## ", start + 1)]


def _modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p.name != "__init__.py" and "__pycache__" not in p.parts)


def test_every_module_and_room_is_named_in_the_layout():
    section = _layout_section()
    named = set(re.findall(r"`([\w/]+\.py)`", section))
    missing = [str(m) for m in _modules() if not ({m.name, str(m), "/".join(m.parts[-2:])} & named)]
    assert not missing, f"modules missing from the README layout: {missing}"
    rooms = sorted({str(p.parent.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")
                    if p.parent != ROOT / pkg})
    for room in rooms:
        assert f"`{room}/`" in section or f"`{Path(room).name}/`" in section, f"room {room}/ has no row in the README layout"


def test_the_layout_names_no_file_that_is_gone():
    names = {m.name for m in _modules()} | {str(m) for m in _modules()} | {"/".join(m.parts[-2:]) for m in _modules()}
    stale = sorted(n for n in re.findall(r"`([\w/]+\.py)`", _layout_section())
                   if n not in names and n != "__init__.py" and not n.startswith("tests/"))
    assert not stale, f"the README layout names files that do not exist: {stale}"
