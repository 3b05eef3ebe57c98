"""Session-wide offline fixtures: built once per test run under one temp dir (shared by the xdist workers)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from tests.support.cores import pin_worker  # noqa: E402

pin_worker()  # under `-n 2`: one core per worker, before torch is imported

from reason_plugins import tiny_models  # noqa: E402
from sae_lens_ext.training import tiny_saes  # noqa: E402
from tests.support.shared_build import build_all, run_root  # noqa: E402

FIXTURE_HOOK = tiny_saes.HOOK


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """One folder for the run: under xdist both workers share it, and build its pieces between them
    (``tests/support/shared_build.py``)."""
    return run_root(tmp_path_factory) / "reason_fixtures"


def _shared(final, build):
    build_all([(final, build)])
    return final


@pytest.fixture(scope="session")
def tokenizer_dir(fixture_root):
    return _shared(fixture_root / "tokenizer", lambda: tiny_models.build_tokenizer(fixture_root / "tokenizer"))


@pytest.fixture(scope="session")
def llama_dir(fixture_root, tokenizer_dir):
    """Random-weight tiny Llama (4 layers, d_model 128, head_dim 32)."""
    return _shared(fixture_root / "llama", lambda: tiny_models.build_model(fixture_root / "llama", tokenizer_dir, family="llama"))


@pytest.fixture(scope="session")
def qwen2_dir(fixture_root, tokenizer_dir):
    """Random-weight tiny Qwen2 (same shape as the Llama fixture, with q/k/v biases)."""
    return _shared(fixture_root / "qwen2", lambda: tiny_models.build_model(fixture_root / "qwen2", tokenizer_dir, family="qwen2"))


@pytest.fixture(scope="session")
def hf_model(llama_dir):
    """The Llama fixture as a plain HF model (float32, eval): the reference every host is held to."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


def _fitted_saes(llama_dir, tokenizer_dir, root, hook, architectures) -> dict:
    """SAEs fitted at ``hook``, one piece per architecture (two workers fit different ones at once)."""
    build_all([(root / arch, lambda arch=arch: tiny_saes.build_saes(llama_dir, tokenizer_dir, root, hook_name=hook, architectures=(arch,)))
               for arch in architectures])
    return {arch: root / arch for arch in architectures}


@pytest.fixture(scope="session")
def sae_dirs(fixture_root, llama_dir, tokenizer_dir):
    """``{"standard"|"topk"|"jumprelu": dir}``: SAEs (d_sae 256) fitted to the Llama fixture at FIXTURE_HOOK."""
    return _fitted_saes(llama_dir, tokenizer_dir, fixture_root / "saes", FIXTURE_HOOK, ("standard", "topk", "jumprelu"))


@pytest.fixture(scope="session")
def standard_sae(sae_dirs):
    """``(dir, SAE)``: the standard fixture SAE and the SAELens object loaded from it (eval mode)."""
    from sae_lens import SAE

    return sae_dirs["standard"], SAE.load_from_disk(str(sae_dirs["standard"])).eval()


@pytest.fixture(scope="session")
def layer_saes(fixture_root, llama_dir, tokenizer_dir, sae_dirs):
    """SAEs at three layers of the Llama fixture, for multi-layer steering:
    ``{hook: (architecture, dir)}`` — topk at layer 1, standard at 2, jumprelu at 3."""
    wanted = {"blocks.1.hook_resid_post": ("topk", fixture_root / "saes_l1"), "blocks.3.hook_resid_post": ("jumprelu", fixture_root / "saes_l3")}
    build_all([(root / arch, lambda hook=hook, arch=arch, root=root: tiny_saes.build_saes(llama_dir, tokenizer_dir, root, hook_name=hook,
                                                                                          architectures=(arch,)))
               for hook, (arch, root) in wanted.items()])  # one list: two workers fit one each
    return {"blocks.1.hook_resid_post": ("topk", wanted["blocks.1.hook_resid_post"][1] / "topk"), FIXTURE_HOOK: ("standard", sae_dirs["standard"]),
            "blocks.3.hook_resid_post": ("jumprelu", wanted["blocks.3.hook_resid_post"][1] / "jumprelu")}


@pytest.fixture(scope="session")
def scored_data(tmp_path_factory, llama_dir):
    import datasets
    from transformers import AutoTokenizer

    from reason_plugins.tiny_models import training_texts

    path = tmp_path_factory.mktemp("views_data") / "traces"
    tok = AutoTokenizer.from_pretrained(llama_dir)
    datasets.Dataset.from_dict({"text": training_texts(tok, n=80, seed=3)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def scored_run(tmp_path_factory, llama_dir, sae_dirs, scored_data):
    """score_to_dir on paths (so run_config can reopen model, SAE and data): 48 rows of 64 tokens."""
    from sae_lens_ext.reason_score.outputs import score_to_dir

    out = tmp_path_factory.mktemp("views_scores")
    score_to_dir(str(llama_dir), str(sae_dirs["standard"]), str(scored_data), out, top_k=10, ignore_tokens=["bos", "eos"],
                 context_size=64, n_samples=48, progress=False)
    return out


@pytest.fixture(scope="session")
def readme_world(fixture_root):
    """The fake hub and input files the README's examples run on (``tests/support/readme_world.py``)."""
    from tests.support.readme_world import VERSION, build_world

    return _shared(fixture_root / f"world-v{VERSION}", lambda: build_world(fixture_root))


# Seconds each long unit of work took in `make test` (2 workers; the slowest tests of two quiet runs of 2026-12-07,
# tests/test_readme.py's sessions one by one; only the order matters). A unit is what `--dist loadscope` hands a
# worker whole: a module, or a class of one (``module::Class``); a class not listed goes with its module.
# The longest start first, so that no long unit starts last on a worker.
MODULE_SECONDS = {"test_lm_eval_dp": 200, "test_ray_score": 85, "test_readme::TestSession_ray": 150, "test_vllm_steering": 170,
                  "test_readme::TestSession_score": 140, "test_lm_eval_cli": 150, "test_engine_start": 90, "test_ray_pipeline": 90,
                  "test_onpolicy": 90, "test_serve_fuzz": 80, "test_readme::TestSession_lmeval": 77, "test_real_model": 70, "test_explorer": 70,
                  "test_vllm_load": 65, "test_readme::TestSession_onpolicy": 63, "test_demo": 58, "test_readme::TestSession_steer": 42,
                  "test_readme::TestSession_train": 70, "test_cli_bad_inputs": 35, "test_readme::TestSession_server": 30,
                  "test_lm_eval_arms": 30, "test_readme::TestSession_loading": 20, "test_dashboards": 15, "test_sweep": 15,
                  "test_autoload": 14, "test_vllm_targets": 12, "test_peers": 45, "test_vllm_raw_readout": 68, "test_harvest": 20}


def unit_seconds(item) -> float:
    module = item.module.__name__.rpartition(".")[2]
    unit = f"{module}::{item.cls.__name__}" if item.cls is not None else module
    return MODULE_SECONDS.get(unit, MODULE_SECONDS.get(module, 0))


def pytest_collection_modifyitems(config, items):
    """Long units first, longest first (``MODULE_SECONDS``), each unit's tests in their own order:
    with ``-n 2 --dist loadscope`` (``make test``) both workers start on long units and the short
    ones fill the gaps at the end. Tests never depend on their order."""
    items.sort(key=lambda item: -unit_seconds(item))  # stable sort
