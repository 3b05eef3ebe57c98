"""ReasonScore runs: resume after interrupt, sharded merge, HF vs TransformerBridge activations,
data loading, bad input (clear error, nothing written), the plugin registration and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from sae_lens_ext.inputs.activations import ActivationSource
from sae_lens_ext.inputs.token_data import token_batches
from sae_lens_ext.reason_score.metric import ReasonStats
from sae_lens_ext.reason_score.outputs import merge_shards, score_to_dir
from sae_lens_ext.reason_score.run import compute_reason_score

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def sae(sae_dirs):
    from sae_lens import SAE

    return SAE.load_from_disk(str(sae_dirs["standard"]))


@pytest.fixture(scope="module")
def text_dataset_dir(tmp_path_factory, tokenizer):
    """A tiny local text dataset saved with datasets.save_to_disk (what --dataset DIR reads)."""
    from datasets import Dataset

    from reason_plugins.tiny_models import training_texts

    path = tmp_path_factory.mktemp("rs_data") / "traces"
    Dataset.from_dict({"text": training_texts(tokenizer, 24, seed=5)}).save_to_disk(str(path))
    return path


def kw(tokenizer, **extra):
    return dict(tokenizer=tokenizer, progress=False, ignore_tokens=["bos", "eos"], n_samples=10, seed=1,
                batch_size=2, **extra)


def test_resume_after_interrupt_equals_uninterrupted(hf_model, sae, tokenizer, text_dataset_dir, tmp_path, monkeypatch):
    full = compute_reason_score(hf_model, sae, str(text_dataset_dir), **kw(tokenizer))
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):
        compute_reason_score(hf_model, sae, str(text_dataset_dir), **kw(tokenizer, checkpoint=ckpt,
                                checkpoint_every=1, _interrupt_after=2))
    assert ReasonStats.load(ckpt).n_batches == 2
    calls = []
    real = ActivationSource.__call__
    monkeypatch.setattr(ActivationSource, "__call__", lambda self, t: calls.append(1) or real(self, t))
    resumed = compute_reason_score(hf_model, sae, str(text_dataset_dir), **kw(tokenizer, checkpoint=ckpt, checkpoint_every=1))
    assert len(calls) == 3  # 10 rows / batch 2 = 5 batches, 2 already in the checkpoint
    assert resumed.stats.n_tokens == full.stats.n_tokens == 10 * 128
    assert torch.allclose(resumed.scores, full.scores, rtol=1e-12, atol=0)
    assert torch.allclose(resumed.mu_groups, full.mu_groups, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="different run"):  # a checkpoint of another configuration is refused
        compute_reason_score(hf_model, sae, str(text_dataset_dir), **kw(tokenizer, checkpoint=ckpt, expand_range=(0, 0)))


def test_sharded_merge_equals_single_run(hf_model, sae, tokenizer, text_dataset_dir, tmp_path):
    single = score_to_dir(hf_model, sae, str(text_dataset_dir), tmp_path / "single", top_k=5, **kw(tokenizer))
    dirs = []
    for i in range(3):
        dirs.append(tmp_path / f"shard{i}")
        score_to_dir(hf_model, sae, str(text_dataset_dir), dirs[-1], top_k=5, num_chunks=3, chunk_index=i,
                        require_matches=False, **kw(tokenizer))
    merged = merge_shards(dirs, tmp_path / "merged", top_k=5)
    assert merged.stats.n_tokens == single.stats.n_tokens
    assert merged.stats.count_pos == single.stats.count_pos > 0
    assert torch.allclose(merged.scores, single.scores, rtol=1e-10, atol=1e-15)
    assert json.loads((tmp_path / "merged" / "top_features.json").read_text()) == single.top(5)
    with pytest.raises(ValueError, match="do not cover"):
        merge_shards(dirs[:2])


def test_hf_and_bridge_activations_agree(llama_dir, hf_model):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(llama_dir), device="cpu")
    tokens = torch.randint(10, 800, (2, 48), generator=torch.Generator().manual_seed(0))
    for hook in (HOOK, "blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"):
        ours_hf = ActivationSource(hf_model, hook)(tokens)
        ours_tl = ActivationSource(bridge, hook)(tokens)
        _, cache = bridge.run_with_cache(tokens, names_filter=hook)  # TL's own full forward
        assert ours_hf.shape == (2, 48, 128)
        assert torch.allclose(ours_hf, ours_tl, atol=1e-5), hook
        assert torch.allclose(ours_tl, cache[hook], atol=1e-6), hook
    assert ActivationSource(bridge, HOOK).stop == 3  # the bridge run stops after the hook layer
    with pytest.raises(ValueError, match="'blocks.2.hook_nonsense' not found"):
        ActivationSource(bridge, "blocks.2.hook_nonsense")


def test_hooked_transformer_source_stops_at_the_hook_layer():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=3, d_model=128, d_head=32, n_heads=4, d_mlp=256,
                                                      n_ctx=64, d_vocab=300, act_fn="gelu", normalization_type="LN"))
    tokens = torch.randint(0, 300, (2, 16))
    source = ActivationSource(model, "blocks.1.hook_resid_post")
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert source.stop == 2
    assert torch.allclose(source(tokens), cache["blocks.1.hook_resid_post"], atol=1e-6)
    with pytest.raises(ValueError, match="token id 300 is outside the model's vocabulary"):
        source(torch.tensor([[1, 300]]))


def test_text_rows_are_concatenated_to_context_size(tokenizer, text_dataset_dir):
    batches = list(token_batches(str(text_dataset_dir), tokenizer, batch_size=4, context_size=64, n_samples=9, seed=0))
    assert [b.shape for b in batches] == [(4, 64), (4, 64), (1, 64)]
    assert all((b[:, 0] == tokenizer.bos_token_id).all() for b in batches)
    no_bos = next(token_batches(str(text_dataset_dir), tokenizer, batch_size=2, context_size=64, prepend_bos=False, seed=0))
    assert (no_bos[0, :63] == batches[0][0, 1:]).all()  # same stream, just without the BOS column
    shards = [torch.cat(list(token_batches(str(text_dataset_dir), tokenizer, context_size=64, n_samples=9, seed=0,
                                              num_chunks=2, chunk_index=i))) for i in range(2)]
    assert shards[0].shape[0] == 5 and shards[1].shape[0] == 4
    assert torch.equal(shards[1][0], batches[0][1])  # row 1 goes to shard 1


def test_bad_inputs_raise_clear_errors_and_write_nothing(hf_model, sae, tokenizer, text_dataset_dir, tmp_path):
    from datasets import Dataset
    from sae_lens import StandardSAE, StandardSAEConfig

    out = tmp_path / "out"
    cases = [
        (dict(hook="blocks.9.hook_resid_post"), "blocks.9.hook_resid_post"),
        (dict(hook="blocks.2.attn.hook_z"), "not supported on a plain HF model"),
        (dict(vocabulary=["zzqqxx"]), "no vocabulary string occurs"),
        (dict(ignore_tokens=[99999]), "ignore token 99999"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            score_to_dir(hf_model, sae, str(text_dataset_dir), out, **{**kw(tokenizer), **extra})
    with pytest.raises(ValueError, match="d_in=64 does not match the model width d_model=128"):
        small = StandardSAE(StandardSAEConfig(d_in=64, d_sae=32))
        small.cfg.metadata.hook_name = HOOK
        score_to_dir(hf_model, small, str(text_dataset_dir), out, **kw(tokenizer))
    empty = tmp_path / "empty"
    Dataset.from_dict({"text": []}).save_to_disk(str(empty))
    with pytest.raises(ValueError, match="cannot load dataset .*empty"):
        score_to_dir(hf_model, sae, str(empty), out, **kw(tokenizer))
    with pytest.raises(ValueError, match="gave no token rows"):
        score_to_dir(hf_model, sae, Dataset.from_dict({"text": []}), out, **kw(tokenizer))
    with pytest.raises(ValueError, match="no 'text' column"):
        score_to_dir(hf_model, sae, Dataset.from_dict({"body": ["a"]}), out, **kw(tokenizer))
    assert not out.exists()


def test_sparsify_sae_through_the_loader_plugin(llama_dir, hf_model, tokenizer, tmp_path):
    """A sparsify k-SAE folder is auto-detected and read by the ``sparsify`` sae_loader plugin; an
    MLP-output hookpoint makes a model given by path load through TransformerBridge."""
    from safetensors.torch import save_file

    from sae_lens_ext.loading.sparsify import load_sparsify_sae

    torch.manual_seed(0)
    for hookpoint in ("layers.2", "layers.1.mlp"):
        (tmp_path / hookpoint).mkdir()
        (tmp_path / hookpoint / "cfg.json").write_text(json.dumps({"d_in": 128, "num_latents": 64, "k": 8}))
        save_file({"encoder.weight": torch.randn(64, 128) * 0.3, "encoder.bias": torch.randn(64) * 0.1,
                   "W_dec": torch.randn(64, 128) * 0.1, "b_dec": torch.zeros(128)}, str(tmp_path / hookpoint / "sae.safetensors"))
    tokens = torch.randint(10, 800, (4, 64), generator=torch.Generator().manual_seed(1))
    tokens[:, 10:12] = torch.tensor(tokenizer.encode(" Wait", add_special_tokens=False)[:1] * 2)
    common = dict(tokenizer=tokenizer, progress=False, vocabulary=[" Wait"])
    auto = compute_reason_score(hf_model, str(tmp_path), tokens, sae_id="layers.2", **common)
    explicit = compute_reason_score(hf_model, load_sparsify_sae(tmp_path, "layers.2"), tokens, **common)
    assert auto.config["hook"] == "blocks.2.hook_resid_post" and auto.d_sae == 64
    assert torch.equal(auto.scores, explicit.scores) and auto.stats.count_pos > 0
    mlp = compute_reason_score(str(llama_dir), str(tmp_path), tokens, sae_id="layers.1.mlp", **common)
    assert mlp.config["hook"] == "blocks.1.hook_mlp_out" and mlp.config["model"] == str(llama_dir) \
        and mlp.config["model_class"] == "TransformerBridge"
    assert torch.isfinite(mlp.scores).all() and mlp.mu_pos.abs().sum() > 0


def test_registered_as_feature_scorer():
    from reason_plugins.manager import get, reset

    reset()
    assert get("feature_scorer", "reason_score") is compute_reason_score


def test_cli_end_to_end_and_merge(llama_dir, sae_dirs, text_dataset_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from reason_plugins.app.cli import main

    base = ["score", "--model", str(llama_dir), "--sae", str(sae_dirs["jumprelu"]), "--dataset", str(text_dataset_dir),
            "--n-samples", "6", "--batch-size", "4", "--top-k", "5", "--no-progress"]
    out = tmp_path / "cli"
    assert main(base + ["--out", str(out), "--explain", "3"]) == 0
    assert "ReasonScore of 256 features over 768 tokens" in capsys.readouterr().out
    for name in ("scores.safetensors", "stats.safetensors", "top_features.json", "score_histogram.png", "run_config.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "checkpoint.safetensors").exists()
    t = load_file(out / "scores.safetensors")
    assert t["scores"].shape == (256,) and t["mu_groups"].shape == (10, 256)
    top = json.loads((out / "top_features.json").read_text())
    assert len(top) == 5 and [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)
    assert top[0]["score"] == pytest.approx(float(t["scores"].max()))
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["expand_range"] == [1, 2] and cfg["alpha"] == 0.7 and cfg["ignore_tokens"] == [0, 1]
    assert (out / "score_histogram.png").read_bytes()[:4] == b"\x89PNG"

    for i in range(2):
        assert main(base + ["--out", str(tmp_path / f"s{i}"), "--num-chunks", "2", "--chunk-index", str(i)]) == 0
    assert main(["score", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    merged = load_file(tmp_path / "m" / "scores.safetensors")
    assert torch.allclose(merged["scores"], t["scores"], rtol=1e-10, atol=1e-15)

    assert main(base + ["--out", str(tmp_path / "bad"), "--explain", "999"]) == 2
    assert "feature index 999 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert not (tmp_path / "bad").exists()


def test_the_engine_path_refuses_bad_input_before_anything_loads(hf_model, sae_dirs):
    from reason_plugins.manager import UnknownNameError

    sae = str(sae_dirs["standard"])
    with pytest.raises(UnknownNameError, match="unknown activation_engine 'tgi'; registered: \\['vllm'\\]"):
        compute_reason_score("/any/model", sae, [[1, 2, 3]], engine="tgi")
    with pytest.raises(ValueError, match="engine='vllm' runs the model itself: pass its name or local directory"):
        compute_reason_score(hf_model, sae, [[1, 2, 3]], engine="vllm")
    with pytest.raises(ValueError, match="generate= needs an activation engine"):
        compute_reason_score("/any/model", sae, None, generate={"prompts": ["hi"]})
    with pytest.raises(ValueError, match="generate= writes the rows itself"):
        compute_reason_score("/any/model", sae, [[1, 2, 3]], engine="vllm", generate={"prompts": ["hi"]})
    with pytest.raises(ValueError, match="non-empty list of non-empty texts"):
        compute_reason_score("/any/model", sae, None, engine="vllm", generate={"prompts": ["", "x"]})
    with pytest.raises(ValueError, match=r"generate\['n'\]=0 is invalid"):
        compute_reason_score("/any/model", sae, None, engine="vllm", generate={"prompts": ["x"], "n": 0})
    with pytest.raises(ValueError, match="no data to score"):
        compute_reason_score("/any/model", sae, None)


def test_the_engine_is_cut_after_the_hook_over_given_rows_and_the_cut_is_no_part_of_the_identity(llama_dir, sae_dirs):
    """Over given rows the session is asked for layers 0..L only (``cut_at``, the SAE's hook layer); ``cut: False``
    and generations load every layer. The job is the same either way: the scores are (tests/test_onpolicy.py)."""
    from sae_lens_ext.reason_score.run import PreparedRun

    sae, rows = str(sae_dirs["standard"]), [[1, 5, 6, 7]] * 2
    cut = PreparedRun(str(llama_dir), sae, rows, engine="vllm", engine_options={"tensor_parallel_size": 1})
    full = PreparedRun(str(llama_dir), sae, rows, engine="vllm", engine_options={"tensor_parallel_size": 1, "cut": False})
    gen = PreparedRun(str(llama_dir), sae, None, engine="vllm", generate={"prompts": ["hi"]})
    assert cut.engine_options == {"tensor_parallel_size": 1, "cut_at": 2} and cut.config["engine_cut_after"] == 2
    assert full.engine_options == {"tensor_parallel_size": 1} and full.config["engine_cut_after"] is None
    assert "cut_at" not in gen.engine_options and gen.config["engine_cut_after"] is None
    assert cut.config["job"] == full.config["job"] and cut.identity == full.identity
