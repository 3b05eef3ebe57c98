"""``reason-sae harvest``: token rows' residual rows into SAELens's cached-activations format, held to
SAELens's own ``CacheActivationsRunner`` (same rows, same token ids) and to SAELens's runner training
from either cache (same SAE); resumable with a run identity; several hooks in one pass."""

from __future__ import annotations

import json

import pytest
import torch

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
CTX = 16


def column(folder, name):
    """A saved dataset's column as one torch tensor."""
    import datasets

    ds = datasets.load_from_disk(str(folder)).with_format("torch")
    return ds[0:len(ds)][name]


@pytest.fixture(scope="module")
def token_rows(tokenizer):
    from reason_plugins.tiny_models import training_texts
    from sae_lens_ext.inputs.token_data import pack_texts

    rows = list(pack_texts(training_texts(tokenizer, n=40, seed=5), tokenizer, CTX, prepend_bos=True))
    return rows[:24]


@pytest.fixture(scope="module")
def rows_dataset(tmp_path_factory, token_rows):
    import datasets

    path = tmp_path_factory.mktemp("harvest_rows") / "rows"
    datasets.Dataset.from_dict({"tokens": token_rows}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def ours(tmp_path_factory, llama_dir, rows_dataset):
    from sae_lens_ext.training.harvest import harvest

    out = tmp_path_factory.mktemp("harvest_ours") / "cache"
    info = harvest(str(llama_dir), str(rows_dataset), HOOKS, out, context_size=CTX, batch_size=5, rows_per_shard=8,
                   progress=False)
    return out, info


@pytest.fixture(scope="module")
def theirs(tmp_path_factory, llama_dir, rows_dataset, token_rows, monkeypatch_module):
    """SAELens's own CacheActivationsRunner over the same token rows (its model: the fixture through
    TransformerBridge, as SAELens's load_model cannot name a local Llama)."""
    import sae_lens.cache_activations_runner as car
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(llama_dir), device="cpu")
    monkeypatch_module.setattr(car, "load_model", lambda *a, **k: bridge)
    out = tmp_path_factory.mktemp("harvest_theirs") / "cache"
    n = len(token_rows)
    cfg = CacheActivationsRunnerConfig(
        dataset_path=str(rows_dataset), model_name="tiny", model_batch_size=4, hook_name=HOOKS[0], d_in=128,
        training_tokens=n * CTX, context_size=CTX, new_cached_activations_path=str(out), shuffle=False,
        dtype="float32", device="cpu", prepend_bos=False, streaming=False,
        buffer_size_gb=n * CTX * 128 * 4 / 2 / 1e9)  # two shards
    import datasets

    CacheActivationsRunner(cfg, override_dataset=datasets.load_from_disk(str(rows_dataset))).run()
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_harvest_rows_equal_cache_activations_runner(ours, theirs, token_rows):
    import datasets

    out, info = ours
    mine, ref = datasets.load_from_disk(str(out / HOOKS[0])), datasets.load_from_disk(str(theirs))
    assert mine.features == ref.features  # the same columns, shapes and dtypes
    assert len(mine) == len(ref) == len(token_rows) == info["rows"]
    ids = column(out / HOOKS[0], "token_ids")
    assert torch.equal(ids, column(theirs, "token_ids"))
    assert torch.equal(ids, torch.tensor(token_rows, dtype=torch.int32))
    a, b = column(out / HOOKS[0], HOOKS[0]), column(theirs, HOOKS[0])
    rel = ((a - b).norm() / b.norm()).item()
    assert rel <= 1e-5, rel


def test_every_hook_in_one_pass_equals_hf(ours, hf_model, token_rows):
    out, _ = ours
    with torch.no_grad():
        states = hf_model(input_ids=torch.tensor(token_rows), output_hidden_states=True).hidden_states
    for hook in HOOKS:
        layer = int(hook.split(".")[1])
        got = column(out / hook, hook)
        assert ((got - states[layer + 1]).norm() / states[layer + 1].norm()).item() <= 1e-6


def test_sae_trained_from_harvest_equals_sae_from_saelens_cache(ours, theirs, llama_dir, tmp_path):
    from sae_lens_ext.training.train import train_from_cache

    out, _ = ours
    kw = dict(architecture="topk", d_sae=64, k=8, training_tokens=256, batch_size_tokens=64, seed=3)
    a = train_from_cache(str(llama_dir), out / HOOKS[0], HOOKS[0], tmp_path / "a", **kw)
    b = train_from_cache(str(llama_dir), theirs, HOOKS[0], tmp_path / "b", **kw)
    for name, wa in a.state_dict().items():
        wb = b.state_dict()[name]
        rel = ((wa - wb).norm() / wb.norm().clamp(min=1e-12)).item()
        print(f"trained {name}: relative difference {rel:.2e}")
        assert rel <= 1e-4, (name, rel)
    assert not torch.equal(a.W_enc, torch.zeros_like(a.W_enc))


def test_resume_and_refusal(llama_dir, rows_dataset, tmp_path, ours):
    from sae_lens_ext.training import activation_cache
    from sae_lens_ext.training.harvest import harvest

    out = tmp_path / "cache"
    real_flush = activation_cache.CacheWriter._flush
    calls = []

    def stop_after_one(self, n):
        if calls:
            raise KeyboardInterrupt
        calls.append(n)
        real_flush(self, n)

    kw = dict(context_size=CTX, batch_size=5, rows_per_shard=8, progress=False)
    activation_cache.CacheWriter._flush = stop_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            harvest(str(llama_dir), str(rows_dataset), HOOKS, out, **kw)
    finally:
        activation_cache.CacheWriter._flush = real_flush
    state = json.loads((out / "harvest.json").read_text())
    assert state["rows"] == 8 and not state["complete"]
    info = harvest(str(llama_dir), str(rows_dataset), HOOKS, out, **kw)
    assert info["resumed_rows"] == 8
    for hook in HOOKS:  # the resumed cache is the uninterrupted one, row for row
        for name in (hook, "token_ids"):
            assert torch.equal(column(out / hook, name), column(ours[0] / hook, name))
    again = harvest(str(llama_dir), str(rows_dataset), HOOKS, out, **kw)
    assert again["tokens_per_s"] is None  # complete: nothing recomputed
    with pytest.raises(ValueError, match=r"holds another harvest \(.*hooks: \['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post'\] there"):
        harvest(str(llama_dir), str(rows_dataset), HOOKS[:1], out, **kw)
    with pytest.raises(ValueError, match="data: "):
        harvest(str(llama_dir), str(rows_dataset), HOOKS, out, **dict(kw, n_rows=10))


def test_a_checkpoint_cut_after_layer_l_computes_the_same_rows_up_to_l(llama_dir, hf_model, token_rows, tmp_path, monkeypatch):
    """The cut engine's checkpoint (``vllm_patches.cut_model``): layers 0..L and nothing after, the same rows at
    L (here through HF; ``test_onpolicy.py`` reads them in the cut and the full engine), from a local folder or
    a hub name in the HF cache."""
    from transformers import AutoModelForCausalLM

    from vllm_patches.cut_model import cut_model

    cut = cut_model(llama_dir, 1, cache=tmp_path)
    assert cut_model(llama_dir, 1, cache=tmp_path) == cut and cut_model(llama_dir, 3, cache=tmp_path) == llama_dir
    model = AutoModelForCausalLM.from_pretrained(str(cut), dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    from sae_lens_ext.training.harvest import hf_rows

    ids = torch.tensor(token_rows[:3])
    hook = "blocks.1.hook_resid_post"  # the decoder layer's output (HF's last hidden state is after the final norm)
    assert torch.equal(hf_rows(model, [hook])(ids)[hook], hf_rows(hf_model, [hook])(ids)[hook])
    with pytest.raises(ValueError, match="it has 4 layers"):
        cut_model(llama_dir, 4, cache=tmp_path)
    # a hub name: read from the (offline) HF cache, the same cut
    import shutil

    import huggingface_hub.constants as hub

    repo = tmp_path / "hub" / "models--fake--tiny-llama"
    shutil.copytree(llama_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    from_hub = cut_model("fake/tiny-llama", 1, cache=tmp_path)
    assert from_hub.name.startswith("fake--tiny-llama-") and cut_model("fake/tiny-llama", 3, cache=tmp_path) == "fake/tiny-llama"
    model = AutoModelForCausalLM.from_pretrained(str(from_hub), dtype=torch.float32).eval()
    assert torch.equal(hf_rows(model, [hook])(ids)[hook], hf_rows(hf_model, [hook])(ids)[hook])
    with pytest.raises(ValueError, match="cannot cut 'fake/absent': no local folder and no hub snapshot of it"):
        cut_model("fake/absent", 1, cache=tmp_path)


def test_saes_trained_together_from_a_harvest_equal_each_trained_alone_with_its_model(ours, llama_dir, tmp_path):
    """Several SAEs from one harvest (``training.multi``: SAELens's MultiSAETrainer, the recipe's tokenizer alone)
    equal the single cached runs the CLI makes (SAELens's runner handed the loaded model): same files, byte for byte."""
    from sae_lens_ext.training.multi import train_many_from_cache
    from sae_lens_ext.training.recipes import apply_overrides, get_config
    from sae_lens_ext.training.train import train_from_config, use_cache

    out, _ = ours
    recipe = apply_overrides(get_config("tiny"), {"model_path": str(llama_dir), "context_size": CTX, "training_tokens": 512,
                                                  "train_batch_size_tokens": 64, "n_batches_in_buffer": 4,
                                                  "store_batch_size_prompts": 4, "n_batches_for_norm_estimate": 2})
    together = train_many_from_cache(recipe, out, hooks=HOOKS, sizes=[64, 96], out_dir=tmp_path / "multi")
    assert sorted(together) == sorted(f"{h}-d{n}" for h in HOOKS for n in (64, 96))
    alone = tmp_path / "alone"
    train_from_config(use_cache(apply_overrides(recipe, {"hook_name": HOOKS[1], "sae.d_sae": 96}), out), out_dir=alone, cached=True)
    for name in ("sae_weights.safetensors", "sparsity.safetensors", "cfg.json"):
        assert (tmp_path / "multi" / f"{HOOKS[1]}-d96" / name).read_bytes() == (alone / name).read_bytes(), name


def test_an_engine_harvest_keeps_about_one_batch_of_readouts(llama_dir, rows_dataset, tmp_path, monkeypatch):
    """The engine keeps finished readouts up to ``readout_memory_mb`` (256 MB by default); a harvest fetches each
    batch's rows once, so it opens its engine with room for about one batch: memory flat in tokens from the
    first batch, not from the 256th MB (a stand-in engine records what it was opened with)."""
    import reason_plugins.manager as manager
    from sae_lens_ext.training.harvest import harvest

    opened = {}

    class Session:
        def __init__(self, *args, **options):
            opened.update(options)

        def raw_rows(self, rows, hooks, steering=None):
            return {h: [torch.zeros(len(r), 128) for r in rows] for h in hooks}

        def close(self):
            pass

    real_get = manager.get
    monkeypatch.setattr(manager, "get", lambda kind, name: Session if kind == "activation_engine" else real_get(kind, name))
    harvest(str(llama_dir), str(rows_dataset), HOOKS, tmp_path / "h", engine="vllm", context_size=CTX, batch_size=8,
            progress=False, engine_options={"cut": False})
    batch = 8 * CTX * len(HOOKS) * (128 * 4 + 16)  # one batch's raw rows, positions and token ids
    assert batch <= opened["readout_memory_mb"] * 2**20 <= 4 * batch + 2**20, opened
    assert opened["raw_hooks"] == HOOKS
