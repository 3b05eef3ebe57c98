"""ReasonScore exactness: our single-pass, chunked implementation against a naive computation written
straight from the definition (Python loops for matching, per-feature float64 means, per-feature
score), for every SAELens architecture we support, plus unit tests of the host-free math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reason_plugins.vocabulary import resolve_vocabulary
from sae_lens_ext.inputs.activations import FeatureEncoder
from sae_lens_ext.reason_score import metric as rsm
from sae_lens_ext.reason_score.run import compute_reason_score
from tests.support.references import assert_close, naive_scores


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rows(tokenizer):
    from reason_plugins.tiny_models import training_texts
    from sae_lens_ext.inputs.token_data import tokens_dataset

    ds = tokens_dataset(tokenizer, training_texts(tokenizer, 12, seed=3), context_size=128)
    return torch.tensor(ds["tokens"][:7])


@pytest.fixture(scope="module")
def resid(hf_model, rows):
    """Residual stream after layer 2 from HF's own hidden_states (not through our hook code)."""
    with torch.no_grad():
        return hf_model(input_ids=rows, output_hidden_states=True).hidden_states[3]


@pytest.fixture(scope="module")
def paper_seqs(tokenizer):
    groups = resolve_vocabulary("paper")
    return [[tuple(tokenizer.encode(s, add_special_tokens=False)) for s in strings] for strings in groups.values()]


def folded_acts(sae_path_or_sae, resid):
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_path_or_sae), fold_W_dec_norm=True) if not isinstance(sae_path_or_sae, SAE) else sae_path_or_sae
    with torch.no_grad():
        return sae.encode(resid).double().numpy()


# ---------------------------------------------------------------- exactness vs the definition
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("expand", [(0, 0), (1, 2)])
@pytest.mark.parametrize("ignore", [False, True])
def test_matches_naive_definition(arch, expand, ignore, sae_dirs, hf_model, tokenizer, rows, resid, paper_seqs):
    from sae_lens import SAE

    ignore_ids = [tokenizer.bos_token_id, tokenizer.eos_token_id] if ignore else []
    ref = naive_scores(rows.tolist(), folded_acts(sae_dirs[arch], resid), paper_seqs, expand, ignore_ids)
    assert ref["count_pos"] > 0 and np.abs(ref["scores"]).max() > 0  # a meaningful fixture
    sae = SAE.load_from_disk(str(sae_dirs[arch]))
    w_enc = sae.W_enc.detach().clone()
    runs = {
        "unchunked": dict(batch_size=8),
        "chunked": dict(batch_size=3, feature_chunk_size=96),  # 3 feature chunks (96, 96, 64), 3 token batches
    }
    for label, kw in runs.items():
        res = compute_reason_score(hf_model, sae, rows, "paper", expand, ignore_ids, 0.7, tokenizer=tokenizer,
                                   progress=False, **kw)
        assert res.stats.count_pos == ref["count_pos"] and res.stats.count_neg == ref["count_neg"], label
        for name in ("scores", "mu_pos", "mu_neg", "mu_groups", "entropy"):
            assert_close(getattr(res, name), ref[name], f"{arch} {expand} ignore={ignore} {label} {name}")
    assert torch.equal(sae.W_enc, w_enc), "the caller's SAE must not be folded in place"


def test_feature_chunks_really_chunk(sae_dirs):
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dirs["topk"]))
    x = torch.randn(5, 128)
    starts = [(s, a.shape) for s, a in FeatureEncoder(sae, 100).chunks(x)]
    assert starts == [(0, (5, 100)), (100, (5, 100)), (200, (5, 56))]
    full = torch.cat([a for _, a in FeatureEncoder(sae, 100).chunks(x)], 1)
    assert ((full > 0).sum(1) <= sae.cfg.k).all()  # top-k across chunks keeps at most k per token
    assert torch.allclose(full, next(FeatureEncoder(sae).chunks(x))[1], atol=1e-6)


def _random_sae(kind, d_in=128, d_sae=64, seed=0, **cfg):
    from sae_lens import GatedSAE, GatedSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if kind == "gated":
        sae = GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, **cfg))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 2 else 0.1))
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    return sae


@pytest.mark.parametrize("chunk", [None, 24])
def test_gated_sae_matches_naive(chunk, hf_model, tokenizer, rows, resid, paper_seqs):
    import copy

    sae = _random_sae("gated")
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    ref = naive_scores(rows.tolist(), folded_acts(folded, resid), paper_seqs, (1, 2), [tokenizer.bos_token_id])
    assert (ref["mu_pos"] > 0).any()
    res = compute_reason_score(hf_model, sae, rows, ignore_tokens=["bos"], tokenizer=tokenizer, progress=False,
                               feature_chunk_size=chunk, batch_size=4)
    assert_close(res.scores, ref["scores"], f"gated chunk={chunk} scores")
    assert_close(res.mu_groups, ref["mu_groups"], f"gated chunk={chunk} mu_groups")


def test_topk_without_rescale_scales_by_decoder_norm(hf_model, tokenizer, rows, resid, paper_seqs):
    """SAELens refuses to fold a TopK SAE trained without rescale_acts_by_decoder_norm (it would
    change the selection); we keep its selection and scale activations by ||W_dec||."""
    sae = _random_sae("topk", rescale_acts_by_decoder_norm=False)
    with torch.no_grad():
        acts = (sae.encode(resid) * sae.W_dec.norm(dim=-1)).double().numpy()
    ref = naive_scores(rows.tolist(), acts, paper_seqs, (1, 2), [])
    for chunk in (None, 20):
        res = compute_reason_score(hf_model, sae, rows, tokenizer=tokenizer, progress=False, feature_chunk_size=chunk)
        assert_close(res.scores, ref["scores"], f"topk no-rescale chunk={chunk} scores")
        assert_close(res.mu_pos, ref["mu_pos"], f"topk no-rescale chunk={chunk} mu_pos")


# ---------------------------------------------------------------- host-free math
def test_token_masks_spans_expand_and_ignore():
    tokens = torch.tensor([[9, 1, 2, 5, 5, 1, 2, 7], [1, 2, 1, 3, 3, 3, 3, 9]])
    groups, pos, neg = rsm.token_masks(tokens, [[(1, 2)], [(3,)]], expand_range=(1, 1), ignore_ids=[9])
    # group 0: "1 2" at (0,1),(0,5),(1,0); widened by one each side, token 9 ignored
    assert groups[0].int().tolist() == [[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert groups[1].int().tolist() == [[0] * 8, [0, 0, 1, 1, 1, 1, 1, 0]]
    assert pos.int().tolist() == [[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]
    assert neg.int().tolist() == [[0] * 8, [0] * 8]  # everything else is ignored (the 9s)
    g0, p0, _ = rsm.token_masks(tokens, [[(1, 2)]], expand_range=(0, 0))
    assert p0.int().tolist()[0] == [0, 1, 1, 0, 0, 1, 1, 0]  # a multi-token match covers its whole span


def test_multi_token_strings_match(tokenizer):
    ids = tokenizer.encode(" let me", add_special_tokens=False)
    assert len(ids) > 1, "fixture tokenizer should split ' let me' (exercises multi-token matching)"
    row = [5, 6] + ids + [7]
    _, pos, _ = rsm.token_masks(torch.tensor([row]), [[tuple(ids)], [(ids[0],)]][:1])
    assert pos[0].tolist() == [False, False] + [True] * len(ids) + [False]
    _, pos, _ = rsm.token_masks(torch.tensor([row[:-2]]), [[tuple(ids)]])  # truncated: no match
    assert not pos.any()


def test_entropy_and_score_from_means():
    mu_groups = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]], dtype=torch.float64)
    h = rsm.normalized_entropy(mu_groups)
    assert torch.allclose(h, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-9)
    assert torch.equal(rsm.normalized_entropy(mu_groups[:1]), torch.ones(3, dtype=torch.float64))
    scores, _ = rsm.scores_from_means(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64),
                                      torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), mu_groups, alpha=0.7)
    assert torch.allclose(scores, torch.tensor([0.25 - 0.5, 0.0, -0.5], dtype=torch.float64))


def test_stats_merge_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 6, (4, 10))
    acts = torch.rand(4, 10, 5)
    seqs = [[(1,)], [(2, 3)]]
    whole, parts = rsm.ReasonStats(["a", "b"], 5), []
    masks = rsm.token_masks(tokens, seqs, (1, 0), [0])
    whole.add_counts(*masks)
    whole.add_acts(acts, *masks)
    for half in (slice(0, 2), slice(2, 4)):
        s = rsm.ReasonStats(["a", "b"], 5)
        m = rsm.token_masks(tokens[half], seqs, (1, 0), [0])
        s.add_counts(*m)
        s.add_acts(acts[half][..., :3], *m, start=0)  # feature slices add into place
        s.add_acts(acts[half][..., 3:], *m, start=3)
        parts.append(s)
    merged = parts[0].merge(parts[1])
    loaded = rsm.ReasonStats.load(merged.save(tmp_path / "s.safetensors"))
    for name in ("sum_pos", "sum_neg", "sum_groups", "count_groups"):
        assert torch.allclose(getattr(loaded, name).double(), getattr(whole, name).double(), rtol=1e-12), name
    assert (loaded.count_pos, loaded.count_neg, loaded.n_tokens) == (whole.count_pos, whole.count_neg, 40)
    with pytest.raises(ValueError, match="different runs"):
        whole.merge(rsm.ReasonStats(["a"], 5))


def test_feature_index_out_of_range_and_top():
    stats = rsm.ReasonStats(["a", "b"], 4)
    stats.sum_pos += torch.tensor([1.0, 4.0, 2.0, 0.0], dtype=torch.float64)
    stats.sum_groups += 1
    stats.count_pos, stats.count_neg = 1, 1
    res = rsm.ReasonScoreResult.from_stats(stats)
    assert [r["feature"] for r in res.top(3)] == [1, 2, 0]
    with pytest.raises(ValueError, match="feature index 4 is out of range.*d_sae=4"):
        res.feature_info(4)
