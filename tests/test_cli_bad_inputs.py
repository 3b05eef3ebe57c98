"""The bad-input table: every case a new user hit (issue 13) plus each ``--help``-documented bound.

Each row runs ``reason-sae`` in-process and asserts: exit code 2, a single stderr line
``reason-sae <cmd>: error: ...`` naming the bad value, no traceback, nothing written (the output
dir is left exactly as it was), and — for rows marked so — no model load and no vLLM engine start
(both are patched to fail loudly). A few rows run as real subprocesses for the console script's
exit code, ``--debug`` and ``REASON_SAE_DEBUG``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reason_plugins.app.cli import main
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK

SCRIPT = Path(sys.executable).parent / "reason-sae"
UNCREATABLE = "/proc/reason-sae-test/out"  # mkdir fails there, even as root


class StartedWork(BaseException):
    """Raised by the patched model loader / engine: the refusal came too late."""


@pytest.fixture(scope="module")
def env(tmp_path_factory, llama_dir, sae_dirs, tokenizer_dir, scored_run, scored_data):  # noqa: F811
    """Paths every row may name: an existing file, empty / truncated inputs, a narrow SAE."""
    from sae_lens import StandardSAE, StandardSAEConfig

    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "a_file").write_text("x")
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text("\n\n")
    (root / "rows.jsonl").write_text('{"text": "x"}\n')
    (root / "prompts.txt").write_text("What is 17 + 5?\n")
    truncated = root / "truncated_sae"
    truncated.mkdir()
    cfg = (Path(sae_dirs["standard"]) / "cfg.json").read_text()
    (truncated / "cfg.json").write_text(cfg[: len(cfg) // 2])
    narrow = StandardSAE(StandardSAEConfig(d_in=64, d_sae=32))
    narrow.cfg.metadata.hook_name = FIXTURE_HOOK
    narrow.save_model(str(root / "narrow_sae"))
    import datasets

    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(root / "empty_ds"))
    import torch

    from sae_lens_ext.training.activation_cache import CacheWriter

    cache = CacheWriter(root / "cache", {"model": "tiny"}, [FIXTURE_HOOK], 4, 128)  # a finished one-hook cache
    cache.start()
    cache.add(torch.zeros(2, 4, dtype=torch.long), {FIXTURE_HOOK: torch.zeros(2, 4, 128)})
    cache.finish()
    return {"root": root, "model": str(llama_dir), "sae": str(sae_dirs["standard"]), "tok": str(tokenizer_dir),
            "run": str(scored_run), "data": str(scored_data), "file": str(root / "a_file"), "jsonl": str(root / "rows.jsonl"), "out": str(root / "out"),
            "prompts": str(root / "prompts.txt"),
            "cache": str(root / "cache" / FIXTURE_HOOK)}


def V(e):  # a vector command up to its options
    return ["vector", "--model", e["model"], "--dataset", e["data"], "--no-progress"]


def H(e):  # a harvest command up to its options
    return ["harvest", "--model", e["model"], "--dataset", e["data"], "--no-progress"]


def G(e):  # an on-policy harvest command up to its options
    return ["harvest", "--model", e["model"], "--hooks", FIXTURE_HOOK, "--engine", "vllm", "--generate", "2", "--out", e["out"], "--no-progress"]


def S(e):  # a score command up to its options
    return ["score", "--model", e["model"], "--sae", e["sae"], "--dataset", e["data"], "--no-progress"]


# (case id, argv builder, text the one-line message must contain, may load the model first)
CASES = [
    # ---- score: the cases
    ("score alpha -1", lambda e: S(e) + ["--alpha", "-1", "--out", e["out"]], "--alpha: expected a finite number > 0, got '-1'", False),
    ("score alpha nan", lambda e: S(e) + ["--alpha", "nan", "--out", e["out"]], "got 'nan'", False),
    ("score alpha inf", lambda e: S(e) + ["--alpha", "inf", "--out", e["out"]], "got 'inf'", False),
    ("score --out is a file", lambda e: S(e) + ["--out", e["file"]], "is an existing file", False),
    ("score --out under a file", lambda e: S(e) + ["--out", e["file"] + "/sub"], "is a file, so the directory cannot be created", False),
    ("score missing model dir", lambda e: ["score", "--model", "/nonexistent/model", "--sae", e["sae"], "--out", e["out"]],
     "--model '/nonexistent/model' does not exist", False),
    ("score missing sae dir", lambda e: ["score", "--model", e["model"], "--sae", "./no_such_sae", "--out", e["out"]],
     "--sae './no_such_sae' does not exist", False),
    ("score truncated SAE cfg.json", lambda e: ["score", "--model", e["model"], "--sae", str(e["root"] / "truncated_sae"),
                                                "--out", e["out"]], "truncated_sae/cfg.json' is not valid JSON", False),
    ("score empty dataset file", lambda e: S(e)[:5] + ["--dataset", str(e["root"] / "empty.jsonl"), "--out", e["out"]],
     "empty.jsonl' is empty", False),
    ("score missing dataset file", lambda e: S(e)[:5] + ["--dataset", str(e["root"] / "nope.jsonl"), "--out", e["out"]],
     "nope.jsonl' does not exist", False),
    ("score empty saved dataset", lambda e: S(e)[:5] + ["--dataset", str(e["root"] / "empty_ds"), "--out", e["out"]],
     "empty_ds", False),
    ("score batch-size 0", lambda e: S(e) + ["--batch-size", "0", "--out", e["out"]], "--batch-size: expected an integer >= 1, got '0'", False),
    ("score n-samples 0", lambda e: S(e) + ["--n-samples", "0", "--out", e["out"]], "--n-samples: expected an integer >= 1, got '0'", False),
    ("score seed -1", lambda e: S(e) + ["--seed", "-1", "--out", e["out"]], "--seed: expected an integer >= 0, got '-1'", False),
    ("score top-k 0", lambda e: S(e) + ["--top-k", "0", "--out", e["out"]], "--top-k: expected an integer >= 1, got '0'", False),
    ("score checkpoint-every 0", lambda e: S(e) + ["--checkpoint-every", "0", "--out", e["out"]], "got '0'", False),
    ("score feature-chunk-size 0", lambda e: S(e) + ["--feature-chunk-size", "0", "--out", e["out"]], "got '0'", False),
    ("score context-size 1", lambda e: S(e) + ["--context-size", "1", "--out", e["out"]], "expected an integer >= 2, got '1'", False),
    ("score num-chunks 0", lambda e: S(e) + ["--num-chunks", "0", "--out", e["out"]], "--num-chunks: expected an integer >= 1", False),
    ("score chunk-index >= num-chunks", lambda e: S(e) + ["--num-chunks", "2", "--chunk-index", "2", "--out", e["out"]],
     "--chunk-index 2 is out of range (expected 0..1", False),
    ("score expand-range 1", lambda e: S(e) + ["--expand-range", "1", "--out", e["out"]], "expected LEFT,RIGHT", False),
    ("score expand-range -1,2", lambda e: S(e) + ["--expand-range=-1,2", "--out", e["out"]], "got '-1,2'", False),
    ("score explain -1", lambda e: S(e) + ["--out", e["out"], "--explain", "-1"], "--explain: expected an integer >= 0", False),
    ("score explain >= d_sae", lambda e: S(e) + ["--out", e["out"], "--explain", "999"], "feature index 999 is out of range", False),
    ("score vocabulary file missing", lambda e: S(e) + ["--vocabulary", "words.json", "--out", e["out"]], "'words.json' does not exist", False),
    ("score ignore token outside vocab", lambda e: S(e) + ["--ignore-tokens", "99999", "--out", e["out"]], "ignore token 99999", True),
    ("score merge missing shard", lambda e: ["score", "--merge", str(e["root"] / "shard_x"), "--out", e["out"]], "shard_x", False),
    ("score without model", lambda e: ["score", "--out", e["out"]], "--model and --sae are required", False),
    # ---- score --engine vllm / --generate: refused before any engine starts
    ("score unknown engine", lambda e: S(e) + ["--engine", "tgi", "--out", e["out"]], "unknown activation_engine 'tgi'; registered: ['vllm']", False),
    ("score generate without engine", lambda e: S(e) + ["--generate", "2", "--prompts", e["file"], "--out", e["out"]],
     "--generate needs --engine vllm", False),
    ("score generate without prompts", lambda e: S(e) + ["--engine", "vllm", "--generate", "2", "--out", e["out"]],
     "--generate needs --prompts FILE", False),
    ("score generate prompts missing", lambda e: S(e) + ["--engine", "vllm", "--generate", "2", "--prompts", "nope.txt", "--out", e["out"]],
     "'nope.txt' does not exist", False),
    ("score generate prompts blank", lambda e: S(e) + ["--engine", "vllm", "--generate", "2", "--prompts", str(e["root"] / "blank.jsonl"),
                                                       "--out", e["out"]], "blank.jsonl' holds no prompt", False),
    ("score generate 0", lambda e: S(e) + ["--engine", "vllm", "--generate", "0", "--out", e["out"]], "--generate: expected an integer >= 1", False),
    ("score prompts without generate", lambda e: S(e) + ["--engine", "vllm", "--prompts", e["file"], "--out", e["out"]],
     "--prompts is for --generate N", False),
    ("score tensor parallel without engine", lambda e: S(e) + ["--tensor-parallel-size", "2", "--out", e["out"]],
     "give --engine vllm", False),
    ("score full engine without engine", lambda e: S(e) + ["--full-engine", "--out", e["out"]], "give --engine vllm", False),
    # ---- vector: refused before the model loads
    ("vector --out not safetensors", lambda e: V(e) + ["--hook", "layers.2", "--out", e["out"] + ".pt"],
     "must end in .safetensors", False),
    ("vector neither hook nor sae", lambda e: V(e) + ["--out", e["out"] + ".safetensors"], "give exactly one of --hook", False),
    ("vector hook and sae", lambda e: V(e) + ["--hook", "layers.2", "--sae", e["sae"], "--out", e["out"] + ".safetensors"],
     "give exactly one of --hook", False),
    ("vector bad hook name", lambda e: V(e) + ["--hook", "layers.2.mlp", "--out", e["out"] + ".safetensors"],
     "'layers.2.mlp' names no residual stream: expected 'blocks.<N>.hook_resid_post' (ours) or 'model.layers.<N>'", False),
    ("vector --out is a dir", lambda e: V(e) + ["--hook", "layers.2", "--out", str(e["root"])], "must end in .safetensors", False),
    ("vector --out uncreatable", lambda e: V(e) + ["--hook", "layers.2", "--out", UNCREATABLE + ".safetensors"], "cannot be created", False),
    ("vector missing dataset", lambda e: ["vector", "--model", e["model"], "--hook", "layers.2", "--dataset", str(e["root"] / "no.jsonl"),
                                          "--out", e["out"] + ".safetensors"], "no.jsonl' does not exist", False),
    # ---- contexts / control / dashboard / diff
    ("contexts n 0", lambda e: ["contexts", "--scores", e["run"], "--n", "0", "--out", e["out"]], "--n: expected an integer >= 1, got '0'", False),
    ("contexts window -3", lambda e: ["contexts", "--scores", e["run"], "--window", "-3", "--out", e["out"]],
     "--window: expected an integer >= 0, got '-3'", False),
    ("contexts n-samples 0", lambda e: ["contexts", "--scores", e["run"], "--n-samples", "0", "--out", e["out"]], "got '0'", False),
    ("contexts top-k 0", lambda e: ["contexts", "--scores", e["run"], "--top-k", "0", "--out", e["out"]], "got '0'", False),
    ("contexts feature -1", lambda e: ["contexts", "--scores", e["run"], "--features", "-1", "--out", e["out"]], "got '-1'", False),
    ("contexts feature >= d_sae", lambda e: ["contexts", "--scores", e["run"], "--features", "999", "--out", e["out"]],
     "--features 999 is out of range", False),
    ("contexts scores not a run", lambda e: ["contexts", "--scores", str(e["root"]), "--out", e["out"]], "run_config.json' does not exist", False),
    ("contexts --out is a file", lambda e: ["contexts", "--scores", e["run"], "--out", e["file"]], "is an existing file", False),
    ("contexts without --scores", lambda e: ["contexts", "--out", e["out"]], "without --scores", False),
    ("control holdout-every 1", lambda e: ["control", "--scores", e["run"], "--holdout-every", "1", "--out", e["out"]], "got '1'", False),
    ("control n-contexts 0", lambda e: ["control", "--scores", e["run"], "--n-contexts", "0", "--out", e["out"]], "got '0'", False),
    ("dashboard per-file 0", lambda e: ["dashboard", "--scores", e["run"], "--per-file", "0", "--out", e["out"]], "got '0'", False),
    ("diff ratio 1", lambda e: ["diff", "--scores", e["run"], "--ratio", "1", "--out", e["out"]], "--ratio: expected a finite number > 1", False),
    ("diff min-freq 2", lambda e: ["diff", "--scores", e["run"], "--min-freq", "2", "--out", e["out"]], "--min-freq: expected a finite number in [0, 1], got '2'", False),
    # ---- data
    ("data empty openthoughts file", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--openthoughts",
                                                str(e["root"] / "empty.jsonl")], "empty.jsonl' is empty", False),
    ("data openthoughts file with no records", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--openthoughts",
                                                          str(e["root"] / "blank.jsonl")], "blank.jsonl' has no records", False),
    ("data missing lmsys file", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--lmsys", "nope.parquet"],
     "'nope.parquet' does not exist", False),
    ("data no inputs", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"]], "give at least one", False),
    ("data context-size 1", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--context-size", "1"], "got '1'", False),
    ("data scoring-samples -1", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--scoring-samples", "-1"], "got '-1'", False),
    ("data max-tokens < context", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--openthoughts", e["jsonl"],
                                             "--max-tokens", "10"], "--max-tokens 10 is smaller than one row", False),
    ("data bad ratio", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--openthoughts", e["jsonl"],
                                  "--ratio", "foo=1"], "bad ratio 'foo=1'", False),
    ("data not a data file", lambda e: ["data", "--tokenizer", e["tok"], "--out", e["out"], "--openthoughts", e["file"]],
     "a_file' is not a .json/.jsonl/.parquet file", False),
    ("data missing tokenizer dir", lambda e: ["data", "--tokenizer", "/no/tokenizer", "--out", e["out"], "--openthoughts", e["jsonl"]],
     "--tokenizer '/no/tokenizer' does not exist", False),
    # ---- steer / sweep: refused before the engine starts
    ("steer feature >= d_sae", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "999", "--value", "3",
                                          "--prompt", "hi"], "feature index 999 is out of range", False),
    ("steer hook past last layer", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--hook", "blocks.9.hook_resid_post",
                                              "--feature", "1", "--value", "3", "--prompt", "hi"], "blocks.9.hook_resid_post' is past", False),
    ("steer SAE at another hook", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--hook", "blocks.0.hook_resid_post",
                                             "--feature", "1", "--value", "3", "--prompt", "hi"], "--force-hook", False),
    ("steer SAE d_in != model width", lambda e: ["steer", "--model", e["model"], "--sae", str(e["root"] / "narrow_sae"), "--feature", "1",
                                                 "--value", "3", "--prompt", "hi"], "d_in=64 but model", False),
    ("steer value nan", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "nan",
                                   "--prompt", "hi"], "--value: expected a finite number, got 'nan'", False),
    ("steer feature -1", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "-1", "--value", "3",
                                    "--prompt", "hi"], "got '-1'", False),
    ("steer max-tokens 0", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                      "--prompt", "hi", "--max-tokens", "0"], "got '0'", False),
    ("steer temperature -1", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                        "--prompt", "hi", "--temperature", "-1"], ">= 0, got '-1'", False),
    ("steer inverted window", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                         "--prompt", "hi", "--from-token", "8", "--to-token", "3"],
     "the window from_token=8 to_token=3 is empty or inverted", False),
    ("steer gate not FEATURE:ABOVE", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                                "--prompt", "hi", "--when", "7"], "--when: expected FEATURE:ABOVE", False),
    ("steer gate feature >= d_sae", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                               "--prompt", "hi", "--when", "999:0.5"], "when.feature 999 is out of range", False),
    ("steer gate threshold inf", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                            "--prompt", "hi", "--when", "3:inf"], "when.above must be a finite number", False),
    ("sweep empty window", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "1,2",
                                      "--to-token", "0", "--out", e["out"]], "--to-token: expected an integer >= 1, got '0'", False),
    ("steer missing model dir", lambda e: ["steer", "--model", "/no/model", "--sae", e["sae"], "--feature", "1", "--value", "3",
                                           "--prompt", "hi"], "'/no/model' does not exist", False),
    ("steer readout not JSON", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                          "--prompt", "hi", "--readout", "{nope"], "readout is not valid JSON", False),
    ("steer readout feature >= d_sae", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                                  "--prompt", "hi", "--readout", json.dumps({"sae": e["sae"], "hook": FIXTURE_HOOK,
                                                                                             "features": [999]})],
     "feature index 999 is out of range", False),
    ("steer readout top_k 0", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                         "--prompt", "hi", "--readout", json.dumps({"sae": e["sae"], "hook": FIXTURE_HOOK, "top_k": 0})],
     "top_k must be an integer >= 1, got 0", False),
    ("steer readout top_k > d_sae", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                               "--prompt", "hi", "--readout", json.dumps({"sae": e["sae"], "hook": FIXTURE_HOOK, "top_k": 300})],
     "top_k 300 is out of range", False),
    ("steer readout past last layer", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                                 "--prompt", "hi", "--readout", json.dumps({"sae": e["sae"], "hook": "blocks.9.hook_resid_post",
                                                                                            "features": [1]})], "is past the model's last layer", False),
    ("steer readout positions", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--value", "3",
                                           "--prompt", "hi", "--readout", json.dumps({"sae": e["sae"], "hook": FIXTURE_HOOK, "features": [1],
                                                                                      "positions": "middle"})], "positions 'middle'", False),
    ("steer two values for three features", lambda e: ["steer", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--feature", "2",
                                                       "--feature", "3", "--value", "1", "--value", "2", "--prompt", "hi"], "got 2", False),
    ("sweep values not numbers", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "a,b",
                                            "--out", e["out"]], "got 'a,b'", False),
    ("sweep values nan", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "0,nan",
                                    "--out", e["out"]], "got '0,nan'", False),
    ("sweep feature >= d_sae", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "999", "--values", "0,2",
                                          "--out", e["out"]], "feature index 999 is out of range", False),
    ("sweep hook past last layer", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--hook", "blocks.9.hook_resid_post",
                                              "--feature", "1", "--values", "0,2", "--out", e["out"], "--force-hook"], "is past the model's last layer", False),
    ("sweep --out is a file", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "0,2",
                                         "--out", e["file"]], "is an existing file", False),
    ("sweep max-tokens 0", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "0,2",
                                      "--out", e["out"], "--max-tokens", "0"], "got '0'", False),
    # ---- score on Ray (issue 26): refused before any model, SAE or cluster work
    ("score --workers 0", lambda e: S(e) + ["--ray", "--workers", "0", "--out", e["out"]], "--workers: expected an integer >= 1, got '0'", False),
    ("score --workers without --ray", lambda e: S(e) + ["--workers", "2", "--out", e["out"]], "--workers needs --ray", False),
    ("score --ray unreachable", lambda e: S(e) + ["--ray", f"127.0.0.1:{_free_port()}", "--workers", "2", "--out", e["out"]],
     "cannot reach the Ray cluster at '127.0.0.1:", False),
    ("score --ray bad address", lambda e: S(e) + ["--ray", "nohost", "--out", e["out"]], "Ray address 'nohost' is not HOST:PORT", False),
    ("score --ray with --engine vllm", lambda e: S(e) + ["--ray", "--engine", "vllm", "--out", e["out"]], "--ray scores every row", False),
    ("score --ray with --num-chunks", lambda e: S(e) + ["--ray", "--num-chunks", "2", "--out", e["out"]], "--ray scores every row", False),
    # ---- an output path that cannot be created (root may "write" to /proc, where mkdir fails): refused first
    *[(f"{cmd} --out under /proc", argv, "cannot be created", False) for cmd, argv in (
        ("score", lambda e: S(e) + ["--out", UNCREATABLE]),
        ("score --merge", lambda e: ["score", "--merge", e["run"], e["run"], "--out", UNCREATABLE]),
        ("contexts", lambda e: ["contexts", "--scores", e["run"], "--out", UNCREATABLE]),
        ("control", lambda e: ["control", "--scores", e["run"], "--out", UNCREATABLE]),
        ("dashboard", lambda e: ["dashboard", "--scores", e["run"], "--out", UNCREATABLE]),
        ("diff", lambda e: ["diff", "--scores", e["run"], "--dataset-b", e["jsonl"], "--out", UNCREATABLE]),
        ("data", lambda e: ["data", "--tokenizer", e["tok"], "--openthoughts", e["jsonl"], "--out", UNCREATABLE]),
        ("train", lambda e: ["train", "--config", "tiny", "--out", UNCREATABLE]),
        ("sweep", lambda e: ["sweep", "--model", e["model"], "--sae", e["sae"], "--feature", "1", "--values", "0,2", "--out", UNCREATABLE]),
        ("demo", lambda e: ["demo", "--model", "tiny", "--out", UNCREATABLE]),
        ("compare", lambda e: ["compare", e["root"], "--out", UNCREATABLE + "/plot.png"]),
    )],
    # ---- harvest / train --cached-activations (issue 33): refused before any model or engine loads
    ("harvest hook outside the model", lambda e: H(e) + ["--hooks", "blocks.9.hook_resid_post", "--out", e["out"]],
     "hook 'blocks.9.hook_resid_post' is outside the model: it has 4 layers", False),
    ("harvest hook not residual", lambda e: H(e) + ["--hooks", "blocks.1.hook_mlp_out", "--out", e["out"]],
     "is not a residual-stream hook", False),
    ("harvest out uncreatable", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--out", UNCREATABLE], "cannot be created", False),
    ("harvest generate without prompts", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--engine", "vllm", "--generate", "2",
                                                            "--out", e["out"]], "--generate needs --prompts FILE", False),
    ("harvest unknown engine", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--engine", "tgi", "--out", e["out"]],
     "unknown activation_engine 'tgi'", False),
    ("harvest tp without engine", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--tensor-parallel-size", "2", "--out", e["out"]],
     "--tensor-parallel-size / --max-model-len configure an engine", False),
    ("harvest steer without engine", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--steer", "{}", "--out", e["out"]],
     "--steer needs --engine vllm", False),
    ("harvest bad steer", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--engine", "vllm", "--steer", "{not json", "--out", e["out"]],
     "not valid JSON", False),
    ("harvest generate with hf", lambda e: H(e)[:3] + ["--hooks", FIXTURE_HOOK, "--generate", "2", "--prompts", e["prompts"], "--out", e["out"]],
     "--generate needs --engine vllm", False),
    ("harvest generate with dataset", lambda e: G(e) + ["--prompts", e["prompts"], "--dataset", e["data"]],
     "give no --dataset", False),
    ("harvest generate prompts missing", lambda e: G(e) + ["--prompts", "nope.txt"], "'nope.txt' does not exist", False),
    ("harvest generate prompts empty", lambda e: G(e) + ["--prompts", str(e["root"] / "blank.jsonl")], "holds no prompt", False),
    ("harvest prompts without generate", lambda e: H(e) + ["--hooks", FIXTURE_HOOK, "--prompts", e["prompts"], "--out", e["out"]],
     "--prompts is for --generate N", False),
    ("harvest generate prompt cannot fit", lambda e: G(e) + ["--prompts", e["prompts"], "--max-model-len", "64", "--max-tokens", "60"],
     "with max_tokens=60 its row needs", False),
    ("harvest generate steer on generated positions", lambda e: G(e) + ["--prompts", e["prompts"], "--steer", json.dumps(
        {"sae": e["sae"], "hook": FIXTURE_HOOK, "edits": [{"feature": 1, "mode": "set", "value": 1.0}], "from_token": 2})],
     "from_token depends on which tokens are generated", False),
    ("harvest missing model", lambda e: ["harvest", "--model", "/no/model", "--dataset", e["data"], "--hooks", FIXTURE_HOOK,
                                         "--out", e["out"]], "/no/model", False),
    ("train cache of another hook", lambda e: ["train", "--config", "r1-distill-llama-8b", "--cached-activations", e["cache"],
                                               "--out", e["out"]], "not the recipe's hook 'blocks.19.hook_resid_post'", False),
    ("train cache of another width", lambda e: ["train", "--config", "r1-distill-llama-8b", "--cached-activations", e["cache"],
                                                "--override", f"hook_name={FIXTURE_HOOK}", "--out", e["out"]],
     "is 128 wide but the SAE's d_in is 4096: set --override sae.d_in=128", False),
    ("train cache missing", lambda e: ["train", "--config", "r1-distill-llama-8b", "--cached-activations", str(e["root"] / "no_cache"),
                                       "--out", e["out"]], "is not a finished SAELens activation cache", False),
    # ---- train several SAEs from one harvest (--hooks / --sizes): refused before anything loads
    ("train hook the harvest lacks", lambda e: ["train", "--config", "tiny", "--override", "sae.d_in=128", "--cached-activations",
                                                str(Path(e["cache"]).parent), "--hooks", f"{FIXTURE_HOOK},blocks.1.hook_resid_post",
                                                "--out", e["out"]], "holds ['blocks.2.hook_resid_post'], not 'blocks.1.hook_resid_post'", False),
    ("train unknown size", lambda e: ["train", "--config", "tiny", "--cached-activations", str(Path(e["cache"]).parent),
                                      "--sizes", "512,big", "--out", e["out"]], "--sizes: 'big' is not an SAE width", False),
    ("train several sizes of another width", lambda e: ["train", "--config", "r1-distill-llama-8b", "--cached-activations",
                                                        str(Path(e["cache"]).parent), "--hooks", FIXTURE_HOOK, "--sizes", "512,1024",
                                                        "--out", e["out"]], "is 128 wide but the SAE's d_in is 4096", False),
    ("train several SAEs without a harvest", lambda e: ["train", "--config", "tiny", "--sizes", "256,512", "--out", e["out"]],
     "give --cached-activations DIR", False),
    # ---- compare
    ("compare n-boot 0", lambda e: ["compare", e["root"], e["root"], "--n-boot", "0"], "--n-boot: expected an integer >= 100, got '0'", False),
    ("compare n-boot 99", lambda e: ["compare", e["root"], e["root"], "--n-boot", "99"], "got '99'", False),
    # ---- explore: refused before anything is read or a server starts
    ("explore missing scores dir", lambda e: ["explore", "--scores", "/nonexistent/scores"], "--scores '/nonexistent/scores' is not a directory", False),
    ("explore dir that is no scored run", lambda e: ["explore", "--scores", str(e["root"])], "is not a ReasonScore output directory", False),
    ("explore missing arms run", lambda e: ["explore", "--scores", e["run"], "--arms", "/nonexistent/runs"],
     "--arms '/nonexistent/runs' does not exist", False),
]


def _free_port() -> int:
    """A loopback port where nothing listens (bound, read, released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_version_outside_the_pinned_range_is_one_line(env, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "__version__", "2.59.1")
    code = main(S(env) + ["--ray", "--workers", "2", "--out", env["out"]])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reason-sae")]
    assert code == 2 and lines == ["reason-sae score: error: ray 2.59.1 is outside the supported range (expected >=2.60,<2.61)"]
    assert not Path(env["out"]).exists()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, env, capsys, monkeypatch):
    name, argv_of, expected, may_load = case
    argv = [str(a) for a in argv_of(env)]
    if not may_load:
        def started(*a, **k):
            raise StartedWork(f"{name}: work started before the refusal")

        import sae_lens_ext.inputs.activations as activations
        import sae_lens_ext.reason_score.run as rs
        import vllm_patches.llm as llm

        monkeypatch.setattr(rs, "load_model", started)  # the score run's own reference
        monkeypatch.setattr(activations, "load_model", started)  # contexts, dashboards, diff import it at call time
        monkeypatch.setattr(llm.SteeredLLM, "__init__", started)
    before = _snapshot(env["root"])
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    # libraries' own warnings / progress bars may also reach stderr; ours is the one line starting "reason-sae"
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("reason-sae")]
    command = argv[0]
    assert code == 2, (name, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"reason-sae {command}: error: "), err
    assert expected in lines[0], (expected, lines[0])
    assert _snapshot(env["root"]) == before, "the refused run wrote or changed files"
    assert not Path(env["out"]).exists()


def test_console_script_exit_code_and_debug_traceback(env):
    argv = [str(SCRIPT), "score", "--model", env["model"], "--sae", str(env["root"] / "truncated_sae"), "--out", env["out"]]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("reason-sae score: error: SAE config")
    debug = subprocess.run(argv + ["--debug"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    import os

    by_env = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "REASON_SAE_DEBUG": "1"})
    assert by_env.returncode == 2 and "Traceback" in by_env.stderr


def test_internal_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only refusals become one line: an error raised outside our packages propagates."""
    import reason_plugins.cli_plugins as cp

    def boom(args):
        json.loads("{")  # a JSONDecodeError raised inside the json module: a bug, not user input

    monkeypatch.setattr(cp, "run", boom)
    with pytest.raises(json.JSONDecodeError):
        main(["plugins"])


def test_preflight_accepts_a_good_spec_and_runs_the_front_end_validator(env, sae_dirs):
    from reason_plugins.spec import SpecError
    from vllm_patches.preflight import preflight

    good = {"sae": env["sae"], "hook": FIXTURE_HOOK, "edits": [{"feature": 3, "mode": "set", "value": 2.0}]}
    assert [s.edits[0].feature for s in preflight(env["model"], [good])] == [3]
    topk_delta = {**good, "sae": str(sae_dirs["topk"]), "method": "delta"}  # only the engine front-end knows this rule
    with pytest.raises(SpecError, match="method 'delta' is not exact"):
        preflight(env["model"], [topk_delta])
    assert preflight(env["model"], [{**good, "hook": "blocks.0.hook_resid_post"}], force_hook=True)


def test_steered_vllm_refuses_before_the_engine(env, tmp_path, monkeypatch):
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_tasks.steered_vllm import SteeredVLLM

    monkeypatch.setattr(VLLM, "__init__", lambda *a, **k: (_ for _ in ()).throw(StartedWork("engine started")))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sae": env["sae"], "hook": "blocks.9.hook_resid_post",
                                "edits": [{"feature": 1, "mode": "set", "value": 1.0}]}))
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post' is past the model's last layer"):
        SteeredVLLM(pretrained=env["model"], steer_path=str(spec))


@pytest.mark.parametrize("name, message", [
    ("narrow.pt", r"vector .*narrow.pt at blocks.1.hook_resid_post .*has 16 values but model .* has hidden_size=128"),
    ("nan.pt", r"nan.pt \[blocks.1.hook_resid_post\]: 'vector' has a non-finite value nan at index 3"),
    ("action.pt", r"action.pt \[blocks.1.hook_resid_post\]: action 'project' is not one of"),
    ("junk.pt", "junk.pt: not an lm-eval steering .pt file"),
    ("junk.gguf", "junk.gguf: not a GGUF file"),
])
def test_steered_vllm_refuses_a_bad_vector_file_before_the_engine(env, tmp_path, monkeypatch, name, message):
    import torch
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_tasks.steered_vllm import SteeredVLLM

    monkeypatch.setattr(VLLM, "__init__", lambda *a, **k: (_ for _ in ()).throw(StartedWork("engine started")))
    v = torch.ones(128 if name != "narrow.pt" else 16)
    if name == "nan.pt":
        v[3] = float("nan")
    path = tmp_path / name
    if name.startswith("junk"):
        path.write_bytes(b"GGUF\x03junk" if name.endswith(".gguf") else b"junk")
    else:
        torch.save({"layers.1": {"steering_vector": v, "steering_coefficient": 2.0, "action": "project" if name == "action.pt" else "add",
                                 "bias": None, "head_index": None}}, path)
    with pytest.raises(ValueError, match=message):
        SteeredVLLM(pretrained=env["model"], steer_path=str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing half-written


@pytest.mark.parametrize("readout, message", [
    ({"hook": "blocks.9.hook_resid_post", "features": [1]}, "blocks.9.hook_resid_post' is past the model's last layer"),
    ({"hook": FIXTURE_HOOK, "features": [999]}, "feature index 999 is out of range"),
    ({"hook": FIXTURE_HOOK, "top_k": 4}, "takes one readout spec with listed 'features'"),
    ("/no/readout.json", "readout='/no/readout.json': no such file"),
    ("{nope", "readout is not valid JSON"),
])
def test_steered_vllm_refuses_a_bad_readout_before_the_engine(env, monkeypatch, readout, message):
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_tasks.steered_vllm import SteeredVLLM

    monkeypatch.setattr(VLLM, "__init__", lambda *a, **k: (_ for _ in ()).throw(StartedWork("engine started")))
    if isinstance(readout, dict):
        readout = {"sae": env["sae"], **readout}
    with pytest.raises(ValueError, match=message):
        SteeredVLLM(pretrained=env["model"], readout=readout)


def test_compare_features_refuses_runs_without_summaries_or_correctness(tmp_path):
    from lm_eval_tasks.comparison.features import feature_report

    summary = {"features": [3], "hook": FIXTURE_HOOK, "output": {"n_tokens": 2, "mean": [1.0], "max": [1.0], "frac_active": [1.0]}}
    with_metric = {"baseline": {"t": {0: {"exact_match": 1.0, "reason_features": [summary]}}},
                   "steered": {"t": {0: {"exact_match": 0.0, "reason_features": [summary]}}}}
    assert feature_report(with_metric, "baseline", n_boot=100)["rows"]
    no_metric = {arm: {"t": {0: {"reasoning_tokens": 3, "reason_features": [summary]}}} for arm in ("baseline", "steered")}
    with pytest.raises(ValueError, match="task 't' has no correctness metric"):
        feature_report(no_metric, "baseline")
    no_summaries = {arm: {"t": {0: {"exact_match": 1.0}}} for arm in ("baseline", "steered")}
    with pytest.raises(ValueError, match="arm 'baseline' task 't' has no reason_features"):
        feature_report(no_summaries, "baseline")


def test_compare_features_think_on_a_model_without_think_tokens_says_so(tmp_path, capsys):
    """Summaries of a model without think tokens have no think section: ``--think`` says that, not "no arm shares
    problems with the baseline"."""
    summary = {"features": [3], "hook": FIXTURE_HOOK, "output": {"n_tokens": 2, "mean": [1.0], "max": [1.0], "frac_active": [1.0]}}
    for arm, correct in (("base", 1.0), ("steer", 0.0)):
        folder = tmp_path / arm / "model"
        folder.mkdir(parents=True)
        rows = [{"doc_id": i, "doc_hash": f"h{i}", "exact_match": correct if i % 2 else 1 - correct, "reasoning_tokens": 5.0 + i,
                 "reason_features": [summary]} for i in range(4)]
        (folder / "samples_t_2026-01-01T00-00-00.000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["compare", str(tmp_path / "base"), str(tmp_path / "steer"), "--out", str(tmp_path / "cmp.png"), "--n-boot", "100",
            "--features"]
    assert main(argv) == 0 and (tmp_path / "cmp_features.json").is_file()
    capsys.readouterr()
    assert main(argv + ["--think"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model has no think tokens (its tokenizer has no '</think>')" in err[0], err
    assert "shares problems" not in err[0]


def test_a_plugin_that_fails_to_import_is_one_line_naming_its_entry_point(tmp_path, monkeypatch, capsys):
    from reason_plugins import manager

    (tmp_path / "broken_reason_plugin.py").write_text("raise ImportError('no module named gpu_backend')\n")
    info = tmp_path / "broken-reason-plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-reason-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[reason_plugins]\nbroken = broken_reason_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    manager.reset()
    try:
        assert main(["plugins"]) == 2
    finally:
        manager.reset()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reason-sae plugins: error: reason_plugins plugin 'broken' (entry point broken = "
                                               "broken_reason_plugin, from broken-reason-plugin) failed to load: ImportError"), err


@pytest.mark.parametrize("args, message", [
    ("steer_path=/no/spec.json", "steer_path '/no/spec.json' is not a file"),
    ("data_parallel_size=0", "data_parallel_size=0 is impossible (expected a whole number >= 1"),
    ("data_parallel_size=two", "data_parallel_size='two' is impossible"),
    ("tensor_parallel_size=-1", "tensor_parallel_size=-1 is impossible"),
])
def test_steered_vllm_refusals_are_one_line_exit_2_under_the_lm_eval_cli(env, monkeypatch, capsys, args, message):
    """From Python a clear exception; under the stock ``lm_eval`` command one line and exit 2, before any engine."""
    from lm_eval.models.vllm_causallms import VLLM

    import lm_eval_tasks.cli_refusals as refusals
    from lm_eval_tasks.steered_vllm import SteeredVLLM
    from reason_plugins.spec import SpecError

    monkeypatch.setattr(VLLM, "__init__", lambda *a, **k: (_ for _ in ()).throw(StartedWork("engine started")))
    arg_string = f"pretrained={env['model']},{args}"
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SteeredVLLM.create_from_arg_string(arg_string)
    monkeypatch.setattr(refusals, "under_lm_eval_cli", lambda: True)
    with pytest.raises(SystemExit) as stop:
        SteeredVLLM.create_from_arg_string(arg_string)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lm_eval --model steered_vllm: error: {err[0].split('error: ', 1)[1]}"] and message in err[0]
    assert not err[0].split("error: ", 1)[1].startswith("steered_vllm:")  # said once


def test_the_stock_lm_eval_command_prints_one_line_for_a_bad_steer_path(env, tmp_path):
    exe = Path(sys.executable).with_name("lm_eval")
    res = subprocess.run([str(exe), "--model", "steered_vllm", "--model_args", f"pretrained={env['model']},steer_path={tmp_path}/nope.json",
                          "--tasks", "tiny_arith", "--include_path", __import__("lm_eval_tasks").TASKS_DIR],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"lm_eval --model steered_vllm: error: steer_path '{tmp_path}/nope.json' is not a file", last


def test_steered_vllm_takes_a_parallel_size_given_as_a_numeric_string():
    from lm_eval_tasks.steered_vllm import _check_parallel_args

    kwargs = {"data_parallel_size": "2", "tensor_parallel_size": 1}
    _check_parallel_args(kwargs)
    assert kwargs == {"data_parallel_size": 2, "tensor_parallel_size": 1}
