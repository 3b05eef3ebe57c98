"""ReasonScore from what the vLLM engine computes (``engine="vllm"``): equal to the HF path on the same
rows for every architecture we steer (<= 1e-6 relative on scores, same top-20), with two tensor-parallel
ranks, sharded and merged, interrupted and resumed; and over the model's own generations: only the
generated tokens are scored (the prompt is context, in no token set), equal to a naive float64 computation
over those positions alone (HF forward + SAELens encode), with transcripts written beside the scores and
a run that reopens like any other; a row that cannot fit the engine's context is refused before generating. Over
given rows the engine is cut after the hook's layer (``vllm_patches.cut_model``): its scores and raw rows equal
the full engine's and the HF path's (<= 1e-6 relative), one or two ranks. The engines run in one child process
(``tests/support/onpolicy_job.py``); the HF references run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.cores import machine_cores
from tests.support.vllm_jobs import run_job

pytestmark = pytest.mark.slow

OPTIONS = dict(ignore_tokens=["bos", "eos"], context_size=64, n_samples=16, batch_size=4, top_k=20)
ARCHS = ("standard", "topk", "jumprelu")
GENERATE = {"prompts": ["What is 17 + 5?", "Hmm, what is 29 - 12?"], "n": 2, "max_tokens": 40, "temperature": 0.8, "seed": 3}
RAW_HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]  # the SAE's hook (the cut's last layer) and one before
RAW_ROWS = [[(7 * i + 11 * j) % 97 + 5 for j in range(n)] for i, n in enumerate((9, 40, 64))]
RAW = {"raw": {"rows": RAW_ROWS, "hooks": RAW_HOOKS}}


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, llama_dir, sae_dirs, scored_data):
    out = tmp_path_factory.mktemp("onpolicy")
    std = str(sae_dirs["standard"])
    cores = machine_cores()
    raw = {"raw_hooks": RAW_HOOKS}
    runs = [{"name": arch, "sae": str(sae_dirs[arch])} for arch in ARCHS]
    runs[0].update(RAW, engine_options=raw)  # standard: the cut engine (the default), also reading raw rows
    runs += [{"name": "full", "sae": std, "engine_options": {**raw, "cut": False}, **RAW},  # every layer
             {"name": "shard0", "sae": std, "num_chunks": 2, "chunk_index": 0},
             {"name": "shard1", "sae": std, "num_chunks": 2, "chunk_index": 1},
             {"name": "resumed", "sae": std, "interrupt_after": 2},
             {"name": "generated", "sae": std, "generate": GENERATE},
             {"name": "tp2", "sae": std, "engine_options": {**raw, "tensor_parallel_size": 2}, **RAW}]
    env = {"REASON_PLUGINS_CACHE": str(tmp_path_factory.mktemp("cache"))}  # the cut checkpoints of this run's fixture
    if len(cores) >= 2:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"{cores[0]}|{cores[1]}"
    job = {"model": str(llama_dir), "data": str(scored_data), "out": str(out), "options": OPTIONS,
           "engine_options": {"max_model_len": 128, "enforce_eager": True}, "env": env, "runs": runs}
    result = run_job(tmp_path_factory.mktemp("onpolicy_job"), job, script="onpolicy_job.py", timeout=1500)
    return out, result["seconds"]


def _scores(folder: Path):
    from safetensors.torch import load_file

    return load_file(folder / "scores.safetensors")["scores"]


def _top(folder: Path) -> list[int]:
    return [row["feature"] for row in json.loads((folder / "top_features.json").read_text())]


def _assert_same_scores(ours, ref, rtol):
    err = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    print(f"scores: max |difference| {err:.2e} of the largest |score| (allowed {rtol:.0e})")
    assert err <= rtol, f"max |difference| {err:.2e} of the largest |score|"


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_scores_equal_the_hf_path_on_the_same_rows(engine_runs, arch, llama_dir, sae_dirs, scored_data, tmp_path):
    from sae_lens_ext.reason_score.outputs import score_to_dir

    out, _ = engine_runs
    hf = score_to_dir(str(llama_dir), str(sae_dirs[arch]), str(scored_data), tmp_path / "hf", progress=False, **OPTIONS)
    _assert_same_scores(_scores(out / arch), hf.scores, 1e-6)  # the engine cut after the hook's layer (the default)
    assert _top(out / arch) == [row["feature"] for row in hf.top(20)]
    config = json.loads((out / arch / "run_config.json").read_text())
    assert config["engine"] == "vllm" and config["identity"]["engine"]["name"] == "vllm"
    assert config["counts"] == hf.counts()  # every token the HF path scored, the engine scored


def test_two_ranks_shards_and_a_resumed_run_equal_one_pass(engine_runs):
    from sae_lens_ext.reason_score.outputs import merge_shards

    out, _ = engine_runs
    one = _scores(out / "standard")
    _assert_same_scores(merge_shards([out / "shard0", out / "shard1"]).scores, one, 1e-12)
    _assert_same_scores(_scores(out / "resumed"), one, 1e-12)
    _assert_same_scores(_scores(out / "tp2"), one, 1e-6)
    assert _top(out / "tp2") == _top(out / "standard")
    assert not (out / "resumed" / "checkpoint.safetensors").exists()


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_the_cut_engine_scores_and_reads_what_the_full_engine_and_hf_do(engine_runs, hf_model, sae_dirs, scored_data, llama_dir):
    """``standard`` ran on the engine cut after the hook's layer (the default over given rows), ``full`` on every
    layer, ``tp2`` cut on two ranks: the same scores, the same run identity, and raw rows at the hook (and one
    layer before) equal to each other and to HF forward hooks on the same token ids."""
    from safetensors.torch import load_file

    from tests.support.references import hf_raw_rows

    out, seconds = engine_runs
    cut, full = (json.loads((out / name / "run_config.json").read_text()) for name in ("standard", "full"))
    assert (cut["engine_cut_after"], full["engine_cut_after"]) == (2, None)
    assert cut["job"] == full["job"]  # the cut is no part of what the run computes
    _assert_same_scores(_scores(out / "standard"), _scores(out / "full"), 1e-6)
    assert _top(out / "standard") == _top(out / "full")
    raws = {name: load_file(out / f"{name}.raw.safetensors") for name in ("standard", "full", "tp2")}
    worst = {}
    for i, ids in enumerate(RAW_ROWS):
        ref = hf_raw_rows(hf_model, ids, None, {}, {h: "after" for h in RAW_HOOKS})
        for hook in RAW_HOOKS:
            key = f"{hook}/{i}"
            assert all(r[key].dtype == torch.float32 and r[key].shape == (len(ids), 128) for r in raws.values())
            pairs = {"cut vs full": (raws["standard"][key], raws["full"][key]),
                     **{f"{name} vs HF": (raws[name][key], ref[hook]) for name in raws}}
            for what, (a, b) in pairs.items():
                worst[what] = max(worst.get(what, 0.0), _rel(a, b))
    print("raw rows, worst relative difference: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) +
          f"; run seconds (engine start included): cut {seconds['standard']:.1f}, full {seconds['full']:.1f}")
    assert max(worst.values()) <= 1e-6, worst


def test_the_models_own_generations_are_scored_written_and_reopened(engine_runs, llama_dir, sae_dirs, tmp_path):
    from sae_lens_ext.reason_score.outputs import score_to_dir

    out, _ = engine_runs
    run = out / "generated"
    transcripts = [json.loads(line) for line in (run / "transcripts.jsonl").read_text().splitlines()]
    assert [(t["prompt_index"], t["choice"]) for t in transcripts] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(t["token_ids"]) == GENERATE["max_tokens"] or t["token_ids"][-1] in (1, 2) for t in transcripts)
    config = json.loads((run / "run_config.json").read_text())
    assert config["identity"]["generate"] == {**{k: v for k, v in {**GENERATE, "chat_template": True}.items() if k != "prompts"},
                                              "scored": "output"}
    assert config["data"] == str((run / "data").resolve())
    import datasets

    rows = datasets.load_from_disk(config["data"])  # one row per continuation: the engine's prompt ids, then its own tokens
    assert sorted(rows.column_names) == ["scored", "tokens"] and len(rows) == len(transcripts)
    width = max(len(t["prompt_token_ids"]) + len(t["token_ids"]) for t in transcripts)
    as_saved = list(zip(rows["tokens"], rows["scored"]))
    for t in transcripts:
        n_prompt, n_out = len(t["prompt_token_ids"]), len(t["token_ids"])
        assert any(tok[:n_prompt + n_out] == t["prompt_token_ids"] + t["token_ids"] and
                   sc == [0] * n_prompt + [1] * n_out + [0] * (width - n_prompt - n_out) for tok, sc in as_saved)
    counted = config["counts"]["positive"] + config["counts"]["negative"]
    assert 0 < counted <= sum(len(t["token_ids"]) for t in transcripts)  # generated tokens only (EOS ignored)
    # the HF path over the very rows the engine scored gives the same scores
    hf = score_to_dir(str(llama_dir), str(sae_dirs["standard"]), config["data"], tmp_path / "hf", progress=False, **OPTIONS)
    _assert_same_scores(_scores(run), hf.scores, 1e-5)
    # and the run reopens like any other: top contexts from its own transcripts
    res = subprocess.run([str(Path(sys.executable).parent / "reason-sae"), "contexts", "--scores", str(run), "--top-k", "2",
                          "--out", str(tmp_path / "ctx")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len((tmp_path / "ctx" / "contexts.jsonl").read_text().splitlines()) == 2


def test_generated_scores_equal_a_naive_float64_computation_over_the_generated_positions(engine_runs, hf_model, sae_dirs):
    """The oracle: each transcript's prompt + output ids through the HF model in float64, the standard SAE's own
    ``encode`` (decoder norms folded, as ReasonScore reads features), masks found over the whole row but counted
    on the generated positions only, and the score from its definition."""
    import copy

    import numpy as np
    from sae_lens import SAE

    from tests.support.references import naive_scores

    out, _ = engine_runs
    run = out / "generated"
    config = json.loads((run / "run_config.json").read_text())
    transcripts = [json.loads(line) for line in (run / "transcripts.jsonl").read_text().splitlines()]
    model = copy.deepcopy(hf_model).double()
    sae = SAE.load_from_disk(str(sae_dirs["standard"])).double().eval()
    sae.fold_W_dec_norm()
    layer = int(config["hook"].split(".")[1])
    width = max(len(t["prompt_token_ids"]) + len(t["token_ids"]) for t in transcripts)
    rows, scored, acts = [], [], np.zeros((len(transcripts), width, int(config["d_sae"])))
    with torch.no_grad():
        for b, t in enumerate(transcripts):
            ids = t["prompt_token_ids"] + t["token_ids"]
            resid = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
            acts[b, :len(ids)] = sae.encode(resid).numpy()
            rows.append(ids + [-1] * (width - len(ids)))
            scored.append([False] * len(t["prompt_token_ids"]) + [True] * len(t["token_ids"]) + [False] * (width - len(ids)))
    seqs = list(config["vocabulary"].values())
    ref = naive_scores(rows, acts, seqs, tuple(config["expand_range"]), config["ignore_tokens"], config["alpha"], scored=scored)
    assert (config["counts"]["positive"], config["counts"]["negative"]) == (ref["count_pos"], ref["count_neg"])
    assert ref["count_pos"] > 0 and ref["count_neg"] > 0
    ours = _scores(run).double().numpy()
    err = float(np.abs(ours - ref["scores"]).max() / np.abs(ref["scores"]).max())
    assert err <= 1e-4, f"max |difference| {err:.2e} of the largest |score|"
    prompt_only = naive_scores(rows, acts, seqs, tuple(config["expand_range"]), config["ignore_tokens"], config["alpha"],
                               scored=[[not s and tok >= 0 for s, tok in zip(sc, row)] for sc, row in zip(scored, rows)])
    assert np.abs(prompt_only["scores"] - ref["scores"]).max() > 10 * err * np.abs(ref["scores"]).max()  # the mask matters


def test_a_row_that_cannot_fit_the_context_is_refused_before_generating(llama_dir, sae_dirs, tmp_path, monkeypatch):
    """No engine starts: the prompt is rendered and counted first."""
    from reason_plugins import manager
    from sae_lens_ext.reason_score.outputs import score_to_dir

    started = []
    monkeypatch.setattr(manager, "get", lambda kind, name, _get=manager.get: (lambda *a, **k: started.append(a)) if kind == "activation_engine"
                        else _get(kind, name))
    with pytest.raises(ValueError, match=r"generate: prompt 1 renders to \d+ tokens; with max_tokens=120 its row needs \d+ tokens "
                                         r"\(one more to read it back\), beyond the engine's context length 128 \(max_model_len\): "
                                         r"lower --max-tokens to \d+ or raise --max-model-len"):
        score_to_dir(str(llama_dir), str(sae_dirs["standard"]), None, tmp_path / "out", engine="vllm", progress=False,  # prompt 1 is longer
                     engine_options={"max_model_len": 128}, generate={**GENERATE, "max_tokens": 120}, **OPTIONS)
    assert started == [] and not (tmp_path / "out" / "transcripts.jsonl").exists()


def test_rows_with_a_scored_mask_are_read_by_the_hf_path_and_refused_by_ray(llama_dir, sae_dirs, tmp_path):
    """A generated run's saved rows: the HF path counts the masked positions only; the Ray path, which would count every
    position, refuses them before any cluster is touched."""
    import datasets

    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.reason_score.outputs import score_to_dir

    data = tmp_path / "rows"
    datasets.Dataset.from_dict({"tokens": [[1, 5, 6, 7], [1, 8, 9, 2]], "scored": [[0, 0, 1, 1], [0, 1, 1, 0]]}).save_to_disk(str(data))
    (tokens, scored), = token_batches(str(data), None, batch_size=2, with_scored=True)
    assert tokens.tolist() == [[1, 5, 6, 7], [1, 8, 9, 2]] and scored.tolist() == [[False, False, True, True], [False, True, True, False]]
    with pytest.raises(ValueError, match="holds a generated run's rows .* score it without ray"):
        score_to_dir(str(llama_dir), str(sae_dirs["standard"]), str(data), tmp_path / "out", ray="local", progress=False)
