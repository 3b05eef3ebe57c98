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


# ---- the on-policy harvest (generate=): its logic through an engine double that reads rows with HF hooks

GEN = {"prompts": ["What is 17 + 5?", "Is 91 prime?", "What is 29 - 12?"], "n": 2, "max_tokens": 12, "temperature": 0.7, "seed": 4}


class EngineDouble:
    """An activation-engine session: ``generate`` draws continuations from a seeded generator, ``raw_rows`` reads each
    whole row with HF forward hooks (what the engine is held to in ``test_vllm_raw_readout.py``)."""

    def __init__(self, hf_model, tokenizer):
        self.hf_model, self.tokenizer, self.generated, self.read = hf_model, tokenizer, 0, []

    def generate(self, prompts, *, n, max_tokens, temperature, seed, chat_template, steering=None):
        self.generated += 1
        g = torch.Generator().manual_seed(seed)
        out = []
        for p in prompts:
            ids = self.tokenizer(p)["input_ids"]
            lengths = torch.randint(3, max_tokens + 1, (n,), generator=g).tolist()
            out.append([{"prompt_token_ids": ids, "token_ids": torch.randint(5, 200, (k,), generator=g).tolist(), "text": p} for k in lengths])
        return out

    def raw_rows(self, rows, hooks, steering=None):
        from sae_lens_ext.training.harvest import hf_rows

        self.read.append([list(r) for r in rows])
        run = hf_rows(self.hf_model, hooks)
        got = [run(torch.tensor([r])) for r in rows]
        return {h: [g[h][0] for g in got] for h in hooks}

    def close(self):
        raise AssertionError("a session the caller passed is left open")


def _generated_reference(hf_model, transcripts, hooks, ctx):
    """Every transcript's prompt + generated ids through HF, the generated positions concatenated in order."""
    from sae_lens_ext.training.harvest import hf_rows

    run = hf_rows(hf_model, hooks)
    ids, acts = [], {h: [] for h in hooks}
    for t in transcripts:
        got = run(torch.tensor([t["prompt_token_ids"] + t["token_ids"]]))
        ids += t["token_ids"]
        for h in hooks:
            acts[h].append(got[h][0, len(t["prompt_token_ids"]):])
    n = len(ids) // ctx * ctx
    return torch.tensor(ids[:n], dtype=torch.int32).view(-1, ctx), {h: torch.cat(acts[h])[:n].view(-1, ctx, 128) for h in hooks}


def test_generate_harvest_keeps_generated_positions_packed_in_order_and_resumes(llama_dir, hf_model, tokenizer, tmp_path):
    from sae_lens_ext.training import activation_cache
    from sae_lens_ext.training.harvest import harvest

    out, ctx = tmp_path / "gen", 8
    kw = dict(engine="vllm", generate=GEN, context_size=ctx, batch_size=2, rows_per_shard=2, progress=False)
    double = EngineDouble(hf_model, tokenizer)
    real_flush, calls = activation_cache.CacheWriter._flush, []

    def stop_after_one(self, n):
        if calls:
            raise KeyboardInterrupt
        calls.append(n)
        real_flush(self, n)

    activation_cache.CacheWriter._flush = stop_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            harvest(str(llama_dir), None, HOOKS, out, session=double, **kw)
    finally:
        activation_cache.CacheWriter._flush = real_flush
    assert double.generated == 1 and json.loads((out / "harvest.json").read_text())["rows"] == 2
    info = harvest(str(llama_dir), None, HOOKS, out, session=double, **kw)
    assert double.generated == 1 and info["resumed_rows"] == 2  # the transcripts were read back, not generated again
    transcripts = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [(t["prompt_index"], t["choice"]) for t in transcripts] == [(i, c) for i in range(3) for c in range(2)]
    n = sum(len(t["token_ids"]) for t in transcripts)
    assert (info["generated_tokens"], info["rows"], info["dropped_tokens"]) == (n, n // ctx, n % ctx) and info["rows"] >= 3
    state = json.loads((out / "harvest.json").read_text())
    assert state["complete"] and state["generated"]["dropped_tokens"] == n % ctx
    assert state["identity"]["sampling"] == {k: GEN[k] for k in ("n", "max_tokens", "temperature", "seed")} | {"chat_template": True}
    ids, acts = _generated_reference(hf_model, transcripts, HOOKS, ctx)
    for hook in HOOKS:
        assert torch.equal(column(out / hook, "token_ids"), ids)
        assert torch.equal(column(out / hook, hook), acts[hook])  # the same forward: bit for bit
    again = harvest(str(llama_dir), None, HOOKS, out, session=double, **kw)
    assert again["tokens_per_s"] is None and again["dropped_tokens"] == n % ctx
    with pytest.raises(ValueError, match=r"holds another harvest \(sampling: .*'temperature': 0.7.* there, .*'temperature': 0.2"):
        harvest(str(llama_dir), None, HOOKS, out, session=double, **dict(kw, generate={**GEN, "temperature": 0.2}))


def test_packed_rows_skip_done_rows_and_never_read_what_is_not_kept():
    from sae_lens_ext.training.harvest_generated import packed_rows, packing

    ts = [{"prompt_token_ids": [1, 2], "token_ids": list(range(10 * i, 10 * i + k))} for i, k in enumerate((3, 5, 2, 4, 3))]
    read_rows = []

    def read(rows):
        read_rows.extend(rows)
        return {"h": [torch.tensor(r).float()[:, None].repeat(1, 2) for r in rows]}  # each position's "activation": its token id

    assert packing(ts, 4) == {"generated_tokens": 17, "rows": 4, "dropped_tokens": 1, "continuations": 5}
    got = list(packed_rows(ts, read, ["h"], 4, skip_rows=2, batch_size=2))
    ids = torch.cat([g[0] for g in got])
    assert ids.tolist() == [[20, 21, 30, 31], [32, 33, 40, 41]]  # rows 2 and 3 of the 17 ids; the last one (the tail) dropped
    assert torch.equal(torch.cat([g[1]["h"] for g in got])[..., 0], ids.float())  # each activation at its own position
    assert [r[2] for r in read_rows] == [20, 30, 40]  # the first two continuations lie in done rows: not read


def test_generate_refusals_before_anything_is_written(llama_dir, tmp_path):
    from sae_lens_ext.training.harvest import harvest

    out = tmp_path / "never"
    kw = dict(context_size=8, progress=False)
    with pytest.raises(ValueError, match="generate= needs an activation engine"):
        harvest(str(llama_dir), None, HOOKS, out, generate=GEN, **kw)
    with pytest.raises(ValueError, match="give prompts, not data too"):
        harvest(str(llama_dir), [[1, 2, 3]], HOOKS, out, engine="vllm", generate=GEN, **kw)
    with pytest.raises(ValueError, match=r"from_token depends on which tokens are generated"):
        harvest(str(llama_dir), None, HOOKS, out, engine="vllm", generate=GEN, steering=[{"hook": HOOKS[0], "from_token": 2}], **kw)
    with pytest.raises(ValueError, match=r"generate: prompt \d renders to \d+ tokens; with max_tokens=60 .* context length 48"):
        harvest(str(llama_dir), None, HOOKS, out, engine="vllm", generate={**GEN, "max_tokens": 60}, engine_options={"max_model_len": 48}, **kw)
    assert not out.exists()
