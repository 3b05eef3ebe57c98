"""Top-activating contexts: the running top-n on hand-made tensors, the real run against an
independent HF + SAELens computation, a sparsify k-SAE on its MLP-output hookpoint, the CLI.
(``scored_data`` / ``scored_run`` live in ``conftest.py``: the "look at features" modules share them.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK


def test_running_top_n_windows_and_token_counts():
    from sae_lens_ext.views.context_stats import TopContexts

    class Tok:
        def decode(self, ids):
            return f"t{ids[0]}"

    tokens = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 2]])
    acts = torch.zeros(2, 5, 2)
    acts[0, 2, 0], acts[1, 4, 0], acts[1, 0, 0] = 3.0, 5.0, 1.0  # feature 0 fires at three places
    acts[0, 1, 1], acts[1, 4, 1] = 2.0, 9.0  # feature 1 on token 2 twice; (1, 4) is masked out below
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 4] = False
    top = TopContexts(2, vocab=10, n=2, window=1)
    top.add(tokens[:1], acts[:1], keep[:1])  # two batches: the running merge must keep global ranks
    top.add(tokens[1:], acts[1:], keep[1:])
    f0, f1 = top.feature_rows([100, 200], Tok())
    assert [c["act"] for c in f0["top_contexts"]] == [3.0, 1.0]  # 5.0 sat on a masked token
    assert f0["top_contexts"][0]["tokens"] == ["t2", "t3", "t4"] and f0["top_contexts"][0]["center"] == 1
    assert (f0["top_contexts"][1]["row"], f0["top_contexts"][1]["pos"]) == (1, 0)
    assert f0["top_contexts"][1]["tokens"] == ["t6", "t7"] and f0["top_contexts"][1]["center"] == 0  # clipped at the row start
    assert f0["n_fired"] == 2 and f0["n_tokens"] == 9 and f0["frequency"] == pytest.approx(2 / 9)
    assert [t["id"] for t in f1["top_tokens"]] == [2] and f1["top_tokens"][0]["share"] == 1.0
    assert len(f1["top_contexts"]) == 1 and f1["max_act"] == 2.0


def _folded_acts(llama_dir, sae_dir, rows, layer):
    """Independent reference: HF hidden states after ``layer`` -> SAELens encode with folded norms."""
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    sae = copy.deepcopy(SAE.load_from_disk(str(sae_dir))).eval()
    sae.fold_W_dec_norm()
    with torch.no_grad():
        hidden = model(input_ids=rows, output_hidden_states=True).hidden_states[layer + 1]
        return sae.encode(hidden)


def test_contexts_match_an_independent_computation(scored_run, llama_dir, sae_dirs, scored_data):
    from transformers import AutoTokenizer

    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.views.contexts import top_contexts
    from sae_lens_ext.views.scored_run import load_scored_run, run_inputs

    run = load_scored_run(scored_run)
    model, sae, data = run_inputs(run)
    assert str(sae) == str(sae_dirs["standard"]) and str(data) == str(scored_data) and str(model) == str(llama_dir)
    features = [r["feature"] for r in run.top(3)]
    rows = top_contexts(model, sae, data, features, run=run, n=5, window=4, n_samples=16, progress=False)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tokens = torch.cat(list(token_batches(str(scored_data), tok, context_size=64, n_samples=16)))
    ref = _folded_acts(llama_dir, sae_dirs["standard"], tokens, int(FIXTURE_HOOK.split(".")[1]))
    special = torch.isin(tokens, torch.tensor([tok.bos_token_id, tok.eos_token_id]))
    ref[special] = 0
    n_kept = int((~special).sum())
    for row, f in zip(rows, features):
        assert row["feature"] == f and row["score"] == pytest.approx(run.info(f)["score"])
        assert row["max_act"] == pytest.approx(float(ref[..., f].max()), rel=1e-4)
        assert row["frequency"] == pytest.approx(float((ref[..., f] > 0).sum()) / n_kept, rel=1e-6)
        acts = [c["act"] for c in row["top_contexts"]]
        assert acts == sorted(acts, reverse=True) and len(acts) == 5
        for c in row["top_contexts"]:
            assert c["acts"][c["center"]] == pytest.approx(c["act"], abs=1e-4)
            assert c["act"] == pytest.approx(float(ref[c["row"], c["pos"], f]), rel=1e-4)
            assert tok.decode([int(tokens[c["row"], c["pos"]])]) == c["tokens"][c["center"]]


def test_sparsify_ksae_reads_the_mlp_output(tmp_path, llama_dir, scored_data):
    """A sparsify k-SAE at layers.1.mlp: contexts come from blocks.1.hook_mlp_out (via the bridge)."""
    from tests.support.sae_folders import D_IN, write_sparsify_folder

    assert D_IN == 128, "the sparsify folder must match the Llama fixture's width (d_model 128)"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.views.contexts import top_contexts

    w = write_sparsify_folder(tmp_path / "layers.1.mlp")
    rows = top_contexts(str(llama_dir), str(tmp_path / "layers.1.mlp"), str(scored_data), [0, 3], n=3, window=2,
                        n_samples=4, context_size=32, progress=False)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tokens = torch.cat(list(token_batches(str(scored_data), tok, context_size=32, n_samples=4)))
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    got = {}
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, a, out: got.setdefault("x", out))
    with torch.no_grad():
        model(input_ids=tokens)
    handle.remove()
    from tests.support.sae_folders import K

    pre = torch.relu((got["x"] - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    top = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values) * w["W_dec"].norm(dim=-1)  # TopK: scaled, not folded
    acts[torch.isin(tokens, torch.tensor([tok.bos_token_id, tok.eos_token_id]))] = 0  # ignored by default
    for row, f in zip(rows, [0, 3]):
        assert row["max_act"] == pytest.approx(float(acts[..., f].max()), rel=1e-4)


def test_cli_writes_jsonl_markdown_and_html(scored_run, tmp_path, capsys):
    from reason_plugins.app.cli import main

    assert main(["contexts", "--scores", str(scored_run), "--top-k", "2", "--n-samples", "8", "--n", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "contexts.jsonl").read_text().splitlines()]
    top2 = json.loads((scored_run / "top_features.json").read_text())[:2]
    assert [r["feature"] for r in lines] == [r["feature"] for r in top2]
    assert all(len(r["top_contexts"]) == 3 and r["top_tokens"] for r in lines)
    assert "| feature | score |" in (tmp_path / "contexts.md").read_text()
    page = (tmp_path / "contexts.html").read_text()
    assert page.count('class="feature-row"') == 2 and "<script" not in page
    assert "[[" in capsys.readouterr().out
    assert main(["contexts", "--scores", str(scored_run), "--features", "999", "--out", str(tmp_path)]) == 2
    assert "d_sae=256" in capsys.readouterr().err
