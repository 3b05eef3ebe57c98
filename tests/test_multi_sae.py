"""Several SAEs from one harvest (``reason-sae train --cached-activations DIR --hooks ... --sizes ...``), trained
together by SAELens's ``MultiSAETrainer`` (``sae_lens_ext.training.multi``): each SAE of a multi run is the SAE
its own single cached run makes (same seed): the same files, byte for byte. Tiny caches written here (16 wide,
rows of 8 tokens with a BOS each, which SAELens leaves out), no model: seconds."""

from __future__ import annotations

import types

import pytest
import torch

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
D, T, N = 16, 8, 48  # 384 tokens, 336 after the BOS are left out: training 1280 reads the cache ~4 times (epochs)
SMALL = {"sae.d_in": D, "context_size": T, "training_tokens": 1280, "train_batch_size_tokens": 32, "n_batches_in_buffer": 4,
         "store_batch_size_prompts": 4, "n_batches_for_norm_estimate": 2}


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def harvest_dir(tmp_path_factory, tokenizer):
    """A finished two-hook harvest of random rows (per hook a different scale: the SAE must read its own hook)."""
    from sae_lens_ext.training.activation_cache import CacheWriter

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (N, T), generator=g)
    ids[:, 0] = tokenizer.bos_token_id
    out = tmp_path_factory.mktemp("multi_sae") / "harvest"
    writer = CacheWriter(out, {"model": "tiny"}, HOOKS, T, D, rows_per_shard=16)
    writer.start()
    writer.add(ids, {h: torch.randn(N, T, D, generator=g) * (i + 1) for i, h in enumerate(HOOKS)})
    writer.finish()
    return out


@pytest.fixture(scope="module")
def recipe(tokenizer_dir):
    from sae_lens_ext.training.recipes import apply_overrides, get_config

    return apply_overrides(get_config("tiny"), dict(SMALL, model_path=str(tokenizer_dir)))


def _single(recipe, harvest_dir, hook, d_sae, out, tokenizer, **extra):
    """The same SAE trained alone through the single cached path (``train_from_config``), its model a stand-in
    (a cached run runs nothing through it; ``test_harvest.py`` does this with the real model)."""
    from transformer_lens.model_bridge.sources.transformers import setup_tokenizer

    from sae_lens_ext.training.recipes import apply_overrides
    from sae_lens_ext.training.train import train_from_config, use_cache

    config = use_cache(apply_overrides(recipe, {"hook_name": hook, "sae.d_sae": d_sae, **extra}), harvest_dir)
    model = types.SimpleNamespace(tokenizer=setup_tokenizer(tokenizer), hook_dict=dict.fromkeys(HOOKS), cfg=types.SimpleNamespace(d_model=D))
    train_from_config(config, model=model, out_dir=out, cached=True)
    return out


def test_cli_trains_hooks_x_sizes_together_each_equal_to_its_single_run(harvest_dir, recipe, tokenizer, tokenizer_dir, tmp_path, capsys):
    from sae_lens import SAE

    from reason_plugins.app.cli import main

    overrides = [a for k, v in dict(SMALL, model_path=tokenizer_dir).items() for a in ("--override", f"{k}={v}")]
    code = main(["train", "--config", "tiny", *overrides, "--cached-activations", str(harvest_dir),
                 "--hooks", ",".join(HOOKS), "--sizes", "32,64", "--out", str(tmp_path / "multi")])
    assert code == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trained")]
    assert len(printed) == 4
    for hook in HOOKS:
        for d_sae in (32, 64):
            multi = tmp_path / "multi" / f"{hook}-d{d_sae}"
            sae = SAE.load_from_disk(str(multi))
            assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (D, d_sae, hook)
            alone = _single(recipe, harvest_dir, hook, d_sae, tmp_path / f"single-{hook}-{d_sae}", tokenizer)
            for name in ("sae_weights.safetensors", "sparsity.safetensors", "cfg.json"):
                assert (multi / name).read_bytes() == (alone / name).read_bytes(), (hook, d_sae, name)
    # the comparison sees the data order: the same SAE trained alone with another seed is another SAE
    other = _single(recipe, harvest_dir, HOOKS[0], 32, tmp_path / "other-seed", tokenizer, seed=43)
    a = SAE.load_from_disk(str(other)).W_enc
    b = SAE.load_from_disk(str(tmp_path / "multi" / f"{HOOKS[0]}-d32")).W_enc
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)


def test_python_call_and_show(harvest_dir, recipe, tmp_path, capsys):
    import json

    from reason_plugins.app.cli import main
    from sae_lens_ext import train_many_from_cache
    from sae_lens_ext.training.multi import plan

    assert list(plan(recipe, harvest_dir, HOOKS[1], [64, 32, 64])) == [f"{HOOKS[1]}-d64", f"{HOOKS[1]}-d32"]
    saes = train_many_from_cache(recipe, harvest_dir, hooks=HOOKS[1:], sizes=[24, 40], out_dir=tmp_path / "py")
    assert sorted(saes) == [f"{HOOKS[1]}-d24", f"{HOOKS[1]}-d40"] and saes[f"{HOOKS[1]}-d40"].cfg.d_sae == 40
    code = main(["train", "--config", "tiny", "--override", f"sae.d_in={D}", "--cached-activations", str(harvest_dir),
                 "--hooks", ",".join(HOOKS), "--show"])
    assert code == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown) == [f"{h}-d64" for h in HOOKS]  # the recipe's size (x4 of 16)
    assert shown[f"{HOOKS[0]}-d64"]["cached_activations_path"].endswith(HOOKS[0])


@pytest.mark.parametrize("hooks,sizes,extra,message", [
    (HOOKS + ["blocks.3.hook_resid_post"], None, {}, "holds ['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post'], not 'blocks.3.hook_resid_post'"),
    (HOOKS, "32,big", {}, "--sizes: 'big' is not an SAE width"),
    (HOOKS, "0", {}, "--sizes: '0' is not an SAE width"),
    (HOOKS, "1.5", {}, "--sizes: '1.5' is not an SAE width"),
    (HOOKS, "32", {"sae.d_in": 128}, "is 16 wide but the SAE's d_in is 128: set --override sae.d_in=16"),
    (HOOKS, "4,64", {"sae": {"architecture": "topk", "d_in": D, "d_sae": 64, "k": 8}}, "size 4 is smaller than the recipe's k=8"),
    (HOOKS, "32", {"compile_sae": True}, "compile_sae are not supported when several SAEs train together"),
])
def test_refusals_name_the_fix(harvest_dir, recipe, hooks, sizes, extra, message, tmp_path):
    from sae_lens_ext.training.multi import train_many_from_cache
    from sae_lens_ext.training.recipes import apply_overrides

    config = dict(recipe, sae=extra.pop("sae")) if "sae" in extra else recipe
    with pytest.raises(ValueError) as err:
        train_many_from_cache(apply_overrides(config, extra), harvest_dir, hooks=hooks, sizes=sizes, out_dir=tmp_path / "o")
    assert message in str(err.value)
    assert not (tmp_path / "o").exists()


def test_several_hooks_need_a_harvest_folder(harvest_dir, recipe, tmp_path):
    from sae_lens_ext.training.multi import plan

    with pytest.raises(ValueError, match="is not a `reason-sae harvest` folder"):
        plan(recipe, harvest_dir / HOOKS[0], HOOKS)
    assert len(plan(recipe, harvest_dir / HOOKS[0], HOOKS[0], "32,64")) == 2  # one SAELens cache: several sizes
