"""The real demo's two SAEs, both trained by SAELens's runner from activations the vLLM engine harvested
(``reason-sae harvest``, then ``train --cached-activations``), with one engine start for both:

1. on CHAMP text: the packed CHAMP rows SAELens's own runner trained on before (same rows, same recipe), read
   by the engine's raw readout;
2. on the model's own generations (``harvest --generate``) for the problems of those CHAMP transcripts: only the
   tokens the model wrote, read back in their context.

The engine has to start for the generations anyway, so the CHAMP rows cost only their own reading there
(the full engine read float32 rows 2.3x faster than SAELens's harvester in ``benchmarks/RESULTS.md``). Both
SAEs are cached by their settings; the harvests run in a child process (the demo starts more engines later),
one engine for whatever is not cached yet (``python -m reason_plugins.app.demo_saes JOB.json``), and the
training here, from the caches the child wrote, which are deleted once the SAEs are saved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECIPE = "smollm2-135m-instruct-demo"
GEN = {"n": 2, "max_tokens": 128, "temperature": 0.7}  # sampling of the second SAE's data
GEN_PROMPTS, PROMPT_ROOM = 24, 512
MAX_MODEL_LEN, MAX_SEQS = 768, 48  # every continuation in one wave; rows of at most 512 + 128 + 1 tokens


def _config(model_dir: str, sae_tokens: int, seed: int) -> dict:
    from sae_lens_ext.training.recipes import apply_overrides, get_config

    return apply_overrides(get_config(RECIPE), {"training_tokens": int(sae_tokens), "seed": int(seed), "model_path": model_dir})


def champ_prompts(tokenizer, sae_tokens: int, seed: int) -> list[str]:
    """The problems of the CHAMP transcripts the first SAE reads (``champ.chat_texts``'s order), each once, at most
    ``GEN_PROMPTS`` of them whose rendered prompt leaves room for the continuation."""
    import random

    from reason_plugins.champ import transcripts

    rows = transcripts()
    random.Random(seed).shuffle(rows)  # as chat_texts(n, seed) picks them
    n = max(50, min(20_000, int(sae_tokens) // 350))
    prompts = []
    for row in rows[:n]:
        p = row["problem"]
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        if p not in prompts and len(tokenizer(rendered)["input_ids"]) <= PROMPT_ROOM:
            prompts.append(p)
    return prompts[:GEN_PROMPTS]


def sae_dirs(model_dir: str, cache: Path, sae_tokens: int, seed: int) -> dict:
    """``{"champ": folder, "generated": folder}``: where each SAE is cached, keyed by its settings."""
    import hashlib

    from reason_plugins import __version__
    from sae_lens_ext.inputs.token_data import PACKING_RULE

    config = _config(model_dir, sae_tokens, seed)
    key = lambda *parts: hashlib.sha256(json.dumps([__version__, PACKING_RULE, config, *parts], sort_keys=True,  # noqa: E731
                                                   default=str).encode()).hexdigest()[:10]
    root = Path(cache) / "saes"
    return {"champ": root / f"{RECIPE}-harvest-{key('engine')}", "generated": root / f"{RECIPE}-generated-{key(GEN, GEN_PROMPTS)}"}


def build_saes(model_dir: str, cache: Path, sae_tokens: int, seed: int = 0, dtype: str = "float32") -> dict:
    """Both SAEs; returns ``{"champ"|"generated": {"dir", "harvest"}}`` with each one's harvest figures (harvester,
    tokens, seconds, tokens/s). The missing harvests run in a child process with one engine; training runs here."""
    import shutil
    import subprocess
    import time

    from reason_plugins.tiny_models import atomic_dir
    from sae_lens_ext.training.recipes import apply_overrides
    from sae_lens_ext.training.train import train_from_config, use_cache

    dirs = sae_dirs(model_dir, cache, sae_tokens, seed)
    missing = [name for name, d in dirs.items() if not d.exists()]
    work = Path(cache) / "harvests" / dirs["champ"].name
    if missing:
        work.mkdir(parents=True, exist_ok=True)
        job = {"model_dir": model_dir, "work": str(work), "sae_tokens": sae_tokens, "seed": seed, "dtype": dtype, "missing": missing}
        (work / "job.json").write_text(json.dumps(job))
        res = subprocess.run([sys.executable, "-m", "reason_plugins.app.demo_saes", str(work / "job.json")], timeout=3600,
                             stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"the demo's SAE harvests failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        config = _config(model_dir, sae_tokens, seed)
        for name in missing:
            info = json.loads((work / f"{name}.json").read_text())

            def build(tmp: Path, name=name, info=info) -> None:
                tokens = min(sae_tokens, info["tokens"])
                small = {"n_batches_in_buffer": 2} if name == "generated" else {}  # a few thousand tokens: a smaller mixing buffer
                cfg = apply_overrides(use_cache(config, work / name / config["hook_name"]),
                                      {"training_tokens": tokens, "output_path": str(tmp), **small})
                t = time.perf_counter()
                train_from_config(cfg, cached=True)
                (tmp / "harvest_info.json").write_text(json.dumps({**info, "train_seconds": round(time.perf_counter() - t, 1),
                                                                   "training_tokens": tokens}, indent=2))

            atomic_dir(dirs[name], build)
        shutil.rmtree(work, ignore_errors=True)  # the SAEs are cached; their activations are not kept
    return {name: {"dir": str(d), "harvest": json.loads((d / "harvest_info.json").read_text())} for name, d in dirs.items()}


def _child(job: dict) -> None:
    """One engine (every layer: it generates too) harvests what is missing into ``work``, with its figures."""
    import time

    from transformers import AutoTokenizer

    from sae_lens_ext.training.harvest import harvest
    from sae_lens_ext.training.train import champ_tokens_dataset
    from vllm_patches.onpolicy import VllmSession

    model_dir, work, sae_tokens, seed = job["model_dir"], Path(job["work"]), int(job["sae_tokens"]), int(job["seed"])
    config = _config(model_dir, sae_tokens, seed)
    hook, ctx = config["hook_name"], int(config["context_size"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    t0 = time.perf_counter()
    # every running row's prefill fits one step: vLLM's CPU runner cannot rewind a seeded sampler over a split prefill
    session = VllmSession(model_dir, None, raw_hooks=[hook], dtype=job["dtype"], max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_SEQS,
                          max_num_batched_tokens=MAX_SEQS * MAX_MODEL_LEN)
    start = round(time.perf_counter() - t0, 1)
    try:
        if "champ" in job["missing"]:
            rows = champ_tokens_dataset(tokenizer, ctx, sae_tokens, seed=seed)
            info = harvest(model_dir, rows, [hook], work / "champ", engine="vllm", context_size=ctx, n_rows=-(-sae_tokens // ctx),
                           dtype=job["dtype"], session=session)
            (work / "champ.json").write_text(json.dumps({
                "harvester": "vLLM engine (raw readout, every layer)", "rows": info["rows"], "tokens": info["tokens"],
                "seconds": round(info["seconds"], 1), "tokens_per_s": info["tokens_per_s"], "engine_start_s": start}))
        if "generated" in job["missing"]:
            gen = {**GEN, "prompts": champ_prompts(tokenizer, sae_tokens, seed), "seed": seed}
            info = harvest(model_dir, None, [hook], work / "generated", engine="vllm", context_size=ctx, dtype=job["dtype"],
                           generate=gen, session=session, engine_options={"max_model_len": MAX_MODEL_LEN})
            (work / "generated.json").write_text(json.dumps({
                "harvester": "vLLM engine (harvest --generate)", "rows": info["rows"], "tokens": info["tokens"],
                "prompts": len(gen["prompts"]), **{k: gen[k] for k in GEN}, "generated_tokens": info["generated_tokens"],
                "dropped_tokens": info["dropped_tokens"], "seconds": round(info["seconds"], 1),
                "generate_seconds": round(info["generate_seconds"], 1), "tokens_per_s": info["tokens_per_s"], "engine_start_s": start}))
    finally:
        session.close()


def saes_markdown(s: dict) -> list[str]:
    """The report's lines on where the two SAEs' activations came from, and their top features side by side."""
    from reason_plugins.app.report_tables import fmt

    saes = s.get("saes")
    if not saes:
        return []
    a, b = saes["champ"]["harvest"], saes["generated"]["harvest"]
    rate = lambda h: fmt(h.get("tokens_per_s"), ".0f") if h.get("tokens_per_s") else "cached"  # noqa: E731
    groups = lambda f: ", ".join(g["group"] for g in f.get("top_groups", [])[:2]) or "–"  # noqa: E731
    lines = ["## Two SAEs from engine harvests: CHAMP text and the model's own generations", "",
             "Both trained by SAELens's runner from activation caches the vLLM engine wrote (`reason-sae harvest`, then "
             "`train --cached-activations`), one engine start for both "
             f"({a.get('engine_start_s', '–')} s):", "",
             "| SAE | data | harvester | tokens | harvest s | tokens/s | training s |", "|---|---|---|---|---|---|---|",
             f"| 1 | CHAMP transcripts + statements (packed rows) | {a['harvester']} | {a['tokens']:,} | {a['seconds']} | {rate(a)} | "
             f"{a.get('train_seconds', '–')} |",
             f"| 2 | its own continuations of {b['prompts']} of those problems (n={b['n']}, {b['max_tokens']} tokens, "
             f"T={b['temperature']}; {b['generated_tokens']:,} generated, {b['dropped_tokens']} dropped) | {b['harvester']} | "
             f"{b['tokens']:,} | {b['seconds']} (generating {b['generate_seconds']}) | {rate(b)} | {b.get('train_seconds', '–')} |", "",
             "Top features by ReasonScore over the same held-out rows (feature ids of different SAEs are unrelated):", "",
             "| rank | SAE 1 feature | score | groups | SAE 2 feature | score | groups |", "|---|---|---|---|---|---|---|"]
    for i, (f, g) in enumerate(zip(s["top_features"][:5], saes["top_generated"][:5])):
        lines.append(f"| {i + 1} | {f['feature']} | {f['score']:.4f} | {groups(f)} | {g['feature']} | {g['score']:.4f} | {groups(g)} |")
    return lines + [""]


if __name__ == "__main__":
    _child(json.loads(Path(sys.argv[1]).read_text()))
