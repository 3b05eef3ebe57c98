"""Installed means registered: in a fresh interpreter that imports nothing of ours, the DeepSeek-R1-Distill
names resolve in TransformerLens and our releases in SAELens (armed by the installed ``.pth`` through
``sae_lens_ext.loading.autoload``), and arming them costs next to nothing at interpreter start."""

from __future__ import annotations

import re
import subprocess
import sys

from sae_lens_ext.loading.deepseek import DEEPSEEK_MODELS
from sae_lens_ext.loading.releases import RELEASES

OURS = ("reason_plugins", "sae_lens_ext", "lm_eval_tasks", "vllm_patches")
PTH_MODULES = ("lm_eval_tasks.autoload", "sae_lens_ext.loading.autoload", "vllm_patches.dist_alias")  # our .pth's lines


def _fresh(code: str) -> str:
    # cwd="/" keeps the repository off sys.path: only the installed distribution can register anything
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_transformer_lens_knows_the_distill_names_with_no_import_of_ours():
    code = ("import sys\n"
            "from transformer_lens import loading_from_pretrained as lp\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OURS!r} and m.endswith(('deepseek', 'releases'))))\n"
            f"print(all(n in lp.OFFICIAL_MODEL_NAMES for n in {sorted(DEEPSEEK_MODELS)!r}))\n"
            "print(lp.get_official_model_name('DeepSeek-R1-Distill-Llama-8B'))\n")
    imported, listed, official = _fresh(code).strip().splitlines()
    assert imported == "['sae_lens_ext.loading.deepseek']"  # registered by the post-import hook, not by the script
    assert listed == "True"
    assert official == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"  # alias lookup (what from_pretrained does first)


def test_sae_lens_resolves_our_releases_with_no_import_of_ours():
    code = ("from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory\n"
            "from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS\n"
            "d = get_pretrained_saes_directory()\n"
            f"print(sorted(r for r in {sorted(RELEASES)!r} if r in d))\n"
            "print(sorted(n for n in NAMED_PRETRAINED_SAE_LOADERS if n.startswith('reason_')))\n")
    releases, loaders = _fresh(code).strip().splitlines()
    assert releases == str(sorted(RELEASES))
    assert loaders == "['reason_sae_lens', 'reason_sparsify']"


def _pth_imports() -> tuple[list[str], int]:
    """Modules imported at interpreter start under our ``.pth`` lines, and their cumulative microseconds."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                         timeout=60, cwd="/")
    names, total, pending = [], 0, []  # importtime prints a module's imports before the module itself
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match.group(2)) // 2, match.group(3)
        if depth == 1:  # a top-level import of site: the end of one .pth line's import tree
            if name in PTH_MODULES:
                total += int(match.group(1))
                names.append(name)
                names.extend(pending)
            pending = []
        else:
            pending.append(name)
    return sorted(set(names)), total


def test_our_pth_imports_nothing_heavy_at_interpreter_start():
    """Structural (load-independent): only our small modules plus ``threading`` load at start-up."""
    names, _ = _pth_imports()
    assert set(PTH_MODULES) <= set(names), "is the package installed?"
    foreign = [n for n in names if n.split(".")[0] not in OURS]
    assert set(foreign) <= {"threading", "_weakrefset", "collections.abc"}, foreign


def test_interpreter_start_cost_of_our_pth_is_small():
    """Timed: best of 5 cumulative import times (``-X importtime``); 20 ms is generous even on a busy machine."""
    costs = [_pth_imports()[1] for _ in range(5)]
    assert min(costs) < 20_000, f"our .pth costs {min(costs) / 1000:.1f} ms at interpreter start"
