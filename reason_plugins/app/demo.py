"""``reason-sae demo``: the end-to-end run. By default on the real packaged model
(``--model smollm2-135m-instruct`` over CHAMP text: ``reason_plugins.app.demo_real``); ``--model tiny``
runs the embedded synthetic version below, on a model small enough for any laptop.

Builds (and caches) the demo tokenizer and a tiny Llama trained for a minute on synthetic R1-style
traces, shows what it generates, trains a tiny SAE on its residual stream with SAELens's own
runner, ranks its features by ReasonScore, shows the top features (SAEDashboard pages, top
contexts, token-driven control), steers the top feature inside the real vLLM engine (baseline vs
steered with reasoning-word counts, and a sweep over strengths), evaluates baseline vs steered
with the stock lm-eval on a tiny embedded task, and writes ``report.md`` (+ ``report.json`` and
figures) into ``--out``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from reason_plugins.app.report_tables import top_features_table

DEMO_HOOK = "blocks.2.hook_resid_post"
DEMO_PROMPTS = ["What is 17 + 5?", "What is 33 * 4?", "What is 29 - 12?"]


def add_arguments(parser) -> None:
    from reason_plugins.cli_args import finite_float, int_at_least

    parser.add_argument("--out", default="demo_out", help="directory for the report and artifacts (default: demo_out)")
    parser.add_argument("--cache", default=None, help="where built models are cached (default: $REASON_PLUGINS_CACHE or ~/.cache/reason-plugins)")
    parser.add_argument("--model", default="smollm2-135m-instruct", choices=["smollm2-135m-instruct", "tiny"],
                        help="the real packaged model over CHAMP text (default) or the tiny synthetic one")
    parser.add_argument("--lm-steps", type=int_at_least(1), default=300, help="tiny only: training steps of the tiny LM (default: 300)")
    parser.add_argument("--sae-tokens", type=int_at_least(1), default=None, help="SAE training tokens (default: 24k real, 200k tiny)")
    parser.add_argument("--score-rows", type=int_at_least(1), default=32, help="real only: 128-token rows of held-out CHAMP text for ReasonScore")
    parser.add_argument("--eval-problems", type=int_at_least(1), default=4, help="real only: CHAMP problems in the lm-eval step")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=64, help="real only: generated tokens per steering request")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="real only: vLLM dtype (default float32)")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--steer-strength", type=finite_float(0, strict=True), default=None,
                        help="steered value = strength x the feature's max activation (the paper's clamp; default 4 real, 3 tiny)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM steering and lm-eval steps")


def run(args) -> int:
    from reason_plugins.cli_args import check_out_dir

    check_out_dir(args.out)  # before any model is built or loaded
    check_out_dir(args.cache or default_cache(), "--cache")
    if args.model != "tiny":
        from reason_plugins.app.demo_real import run_real_demo

        report = run_real_demo(Path(args.out), cache=args.cache, sae_tokens=args.sae_tokens or 24_000, score_rows=args.score_rows,
                               seed=args.seed, steer_strength=args.steer_strength or 4.0, vllm=not args.no_vllm,
                               eval_problems=args.eval_problems, max_tokens=args.max_tokens, dtype=args.dtype)
        print(f"demo report: {report}")
        return 0
    args.sae_tokens = args.sae_tokens or 200_000
    args.steer_strength = args.steer_strength or 3.0
    report = run_demo(Path(args.out), cache=args.cache, lm_steps=args.lm_steps, sae_tokens=args.sae_tokens, seed=args.seed,
                      steer_strength=args.steer_strength, vllm=not args.no_vllm)
    print(f"demo report: {report}")
    return 0


def default_cache() -> Path:
    return Path(os.environ.get("REASON_PLUGINS_CACHE", Path.home() / ".cache" / "reason-plugins"))


def build_demo_model(cache: Path, lm_steps: int = 300, seed: int = 0) -> tuple[Path, list[float]]:
    """The demo's tiny Llama, trained on the synthetic corpus; cached by its build parameters."""
    from reason_plugins import tiny_models

    key = tiny_models.cache_key("demo", lm_steps, seed)
    tokenizer = tiny_models.build_tokenizer(cache / f"tokenizer-{key}", seed=seed)
    base = tiny_models.build_model(cache / f"llama-init-{key}", tokenizer, family="llama", seed=seed)
    return tiny_models.train_model(base, cache / f"llama-trained-{key}", steps=lm_steps, seed=seed)


def greedy_generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 120) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    for prompt in prompts:
        batch = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outputs.append(tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=False))
    return outputs


def _plot_losses(losses: list[float], path: Path) -> None:
    from reason_plugins.figures import pyplot, write_figure_atomic

    fig, ax = pyplot().subplots(figsize=(5, 3))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="cross-entropy", title="tiny LM training on synthetic R1 traces", yscale="log")
    fig.tight_layout()
    write_figure_atomic(fig, path, tight=False)


def _sae_stats(sae, model_dir: Path, texts: list[str]) -> dict:
    """Reconstruction quality of the trained SAE on held-out traces, and each feature's max activation."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    acts = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == DEMO_HOOK)
            acts.append(cache[DEMO_HOOK][0, 1:])  # BOS excluded, as in training
        x = torch.cat(acts)
        feats = sae.encode(x)
        recon = sae.decode(feats)
    explained = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    return {"tokens": int(x.shape[0]), "l0": float((feats > 0).float().sum(-1).mean()),
            "explained_variance": float(explained), "dead_features": int(((feats > 0).sum(0) == 0).sum()),
            "d_sae": int(sae.cfg.d_sae), "d_in": int(sae.cfg.d_in), "max_acts": feats.max(0).values.tolist()}


def run_demo(out: Path, cache: str | Path | None = None, lm_steps: int = 300, sae_tokens: int = 200_000, seed: int = 0,
             steer_strength: float = 3.0, vllm: bool = True) -> Path:
    from transformers import AutoTokenizer

    from reason_plugins import tiny_models
    from reason_plugins.files import write_json_atomic, write_text_atomic
    from reason_plugins.vocabulary import count_reasoning_words
    from sae_lens_ext.inputs.token_data import tokens_dataset
    from sae_lens_ext.reason_score.outputs import score_to_dir
    from sae_lens_ext.training.train import train_sae

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else default_cache()
    steps = 7 if vllm else 5

    print(f"[1/{steps}] tiny reasoning LM (built once, then cached)")
    model_dir, losses = build_demo_model(cache, lm_steps=lm_steps, seed=seed)
    _plot_losses(losses, out / "lm_loss.png")

    print(f"[2/{steps}] greedy generations")
    generations = greedy_generate(model_dir, DEMO_PROMPTS)
    samples = [{"prompt": p, "output": g, "reasoning_words": sum(count_reasoning_words(g).values())}
               for p, g in zip(DEMO_PROMPTS, generations)]

    print(f"[3/{steps}] SAE on {DEMO_HOOK} with SAELens's training runner")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = tokens_dataset(tokenizer, tiny_models.training_texts(tokenizer, n=2000, seed=seed + 1), context_size=128)
    sae = train_sae(model_dir, dataset, DEMO_HOOK, out / "sae", architecture="standard", d_sae=512,
                    training_tokens=min(sae_tokens, len(dataset) * 128), seed=seed)
    stats = _sae_stats(sae, model_dir, tiny_models.training_texts(tokenizer, n=20, seed=seed + 99))
    max_acts = stats.pop("max_acts")

    print(f"[4/{steps}] ReasonScore of every feature (one pass over held-out traces)")
    held_out = tokens_dataset(tokenizer, tiny_models.training_texts(tokenizer, n=300, seed=seed + 2), context_size=128)
    result = score_to_dir(str(model_dir), sae, held_out, out / "reason_score", top_k=10,
                          ignore_tokens=["bos", "eos", "pad"], progress=True)
    top = result.top(10)

    print(f"[5/{steps}] look at the top features: SAEDashboard pages, top contexts, token-driven control")
    from reason_plugins.app.demo_views import demo_views

    views = demo_views(model_dir, out / "sae", out / "reason_score", out / "views", [f["feature"] for f in top[:5]], data=held_out)
    summary = {"model_dir": str(model_dir), "lm_final_loss": losses[-1], "lm_steps": lm_steps, "hook": DEMO_HOOK,
               "samples": samples, "sae_dir": str(out / "sae"), "sae": stats, "top_features": top,
               "views": {k: str(Path(v).relative_to(out)) for k, v in views.items() if k != "pages"}}
    if vllm:
        feature = top[0]["feature"]
        value = steer_strength * max_acts[feature]
        print(f"[6/{steps}] vLLM: steer feature {feature} to {value:.2f} ({steer_strength} x its max activation), then sweep")
        summary["steering"], summary["sweep"] = steer_in_vllm(model_dir, out, feature, value, max_acts[feature])
        print(f"[7/{steps}] lm-eval: tiny embedded task, baseline + top features at two strengths in one engine (--model steered_vllm arms=)")
        from lm_eval_tasks.run_arms import run_demo_arms

        chosen = {f["feature"]: max_acts[f["feature"]] for f in top[:2]}
        ev = run_demo_arms(model_dir, out / "sae", DEMO_HOOK, chosen, out / "lm_eval", strengths=(steer_strength / 2, steer_strength),
                           n_problems=12, max_gen_toks=160)
        summary["lm_eval"] = {"plot": str(Path(ev["plot"]).relative_to(out)), "metrics": ev["metrics"], "arms": [a["name"] for a in ev["arms"]],
                              "table": Path(ev["plots"]["markdown"]).read_text(), "n_problems": ev["n_problems"],
                              "dose_plot": str(Path(ev["plots"]["dose"]).relative_to(out)) if "dose" in ev["plots"] else None}
    summary["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / "report.json", summary)
    write_text_atomic(out / "report.md", _report_markdown(summary))
    return out / "report.md"


def steer_in_vllm(model_dir: Path, out: Path, feature: int, value: float, max_act: float, max_tokens: int = 120):
    """Baseline vs steered greedy generations of the demo prompts in the real vLLM engine, then a
    sweep over strengths (0-4 x max activation) on the same engine. Eager, as in the real demo: a tiny
    model gains nothing from torch.compile but its start-up time (the compiled path is held by the tests)."""
    from vllm import SamplingParams

    from reason_plugins.vocabulary import count_reasoning_words
    from vllm_patches.llm import SteeredLLM
    from vllm_patches.sweep import run_sweep

    sae_dir = out / "sae"
    spec = {"sae": str(sae_dir), "hook": DEMO_HOOK, "edits": [{"feature": feature, "mode": "set", "value": value}]}
    llm = SteeredLLM(str(model_dir), saes=[{"sae": str(sae_dir), "hook": DEMO_HOOK}], dtype="float32", max_model_len=512, seed=0,
                     enforce_eager=True)
    prompts = llm.chat_prompts(DEMO_PROMPTS)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    outputs = llm.generate(prompts + prompts, params, steering=tuple([None] * len(prompts) + [spec] * len(prompts)))
    applied = llm.applied(outputs)
    rows = []
    for i, prompt in enumerate(DEMO_PROMPTS):
        base, steered = outputs[i].outputs[0], outputs[len(prompts) + i].outputs[0]
        rows.append({"prompt": prompt, "baseline": base.text, "steered": steered.text,
                     "baseline_reasoning_words": sum(count_reasoning_words(base.text).values()),
                     "steered_reasoning_words": sum(count_reasoning_words(steered.text).values()),
                     "baseline_tokens": len(base.token_ids), "steered_tokens": len(steered.token_ids),
                     "applied": applied[len(prompts) + i]})
    sweep = run_sweep(model_dir, sae_dir, DEMO_HOOK, feature, [round(k * max_act, 3) for k in (0, 1, 2, 3, 4)],
                      DEMO_PROMPTS, out / "sweep", max_tokens=max_tokens, llm=llm)
    del llm
    return {"spec": spec, "rows": rows}, {"png": str(Path(sweep["png"]).relative_to(out)), "summary": sweep["summary"]}


def _report_markdown(s: dict) -> str:
    lines = [
        "# reason-plugins demo", "",
        f"Tiny Llama (4 layers, d_model 128) trained {s['lm_steps']} steps on synthetic R1-style traces: "
        f"final loss {s['lm_final_loss']:.3f}. Model: `{s['model_dir']}`.", "",
        "![LM training loss](lm_loss.png)", "",
        "## What the model writes (greedy)", "",
    ]
    for sample in s["samples"]:
        lines += [f"**{sample['prompt']}** — {sample['reasoning_words']} reasoning words", "", "```", sample["output"], "```", ""]
    st = s["sae"]
    lines += [
        f"## SAE on `{s['hook']}` (trained with SAELens's runner)", "",
        "| d_in | d_sae | L0 | explained variance | dead features | eval tokens |", "|---|---|---|---|---|---|",
        f"| {st['d_in']} | {st['d_sae']} | {st['l0']:.1f} | {st['explained_variance']:.3f} | {st['dead_features']} | {st['tokens']} |", "",
        f"Saved to `{s['sae_dir']}` (load with `sae_lens.SAE.load_from_disk`).", "",
        "## Top features by ReasonScore", "",
        "![ReasonScore distribution](reason_score/score_histogram.png)", "",
        *top_features_table(s["top_features"]),
    ]
    lines += ["", "Full table: `reason_score/top_features.json`; all scores: `reason_score/scores.safetensors`.", ""]
    v = s["views"]
    lines += ["## Looking at them", "",
              f"- [SAEDashboard pages for the top 5 features (offline)]({v['index']})",
              f"- [top-activating contexts]({v['contexts_html']}) ([markdown]({v['contexts_md']}))",
              f"- token-driven control (reasoning feature or word detector?): [figure]({v['control_png']}), [data]({v['control_json']})",
              "", f"![per-group activation profile]({v['group_profile_png']})", "", f"![token-driven control]({v['control_png']})", ""]
    if "steering" in s:
        edit = s["steering"]["spec"]["edits"][0]
        lines += [f"## Steering feature {edit['feature']} in vLLM (set to {edit['value']:.2f}, method delta, torch.compile on)", "",
                  "| prompt | reasoning words: baseline → steered | tokens: baseline → steered | mean abs delta |", "|---|---|---|---|"]
        for r in s["steering"]["rows"]:
            delta = (r["applied"] or {}).get("mean_abs_delta", float("nan"))
            lines.append(f"| {r['prompt']} | {r['baseline_reasoning_words']} → {r['steered_reasoning_words']} | "
                         f"{r['baseline_tokens']} → {r['steered_tokens']} | {delta:.4f} |")
        lines.append("")
        for r in s["steering"]["rows"]:
            lines += [f"**{r['prompt']}**", "", "baseline:", "```", r["baseline"], "```", "steered:", "```", r["steered"], "```", ""]
    if "sweep" in s:
        lines += ["## Steering sweep (value vs reasoning words and length)", "", f"![steering sweep]({s['sweep']['png']})", ""]
    if "lm_eval" in s:
        ev = s["lm_eval"]
        lines += [f"## lm-eval: tiny embedded task ({ev['n_problems']} problems), {len(ev['arms'])} arms in one engine", "",
                  "One lm-eval run with our `steered_vllm` model and `arms=` (baseline + top features at two strengths), greedy; "
                  "each arm vs the baseline with 95% bootstrap intervals, a paired test and Holm-adjusted p-values:", "",
                  ev["table"], "", f"![forest plot]({ev['plot']})", ""]
        if ev.get("dose_plot"):
            lines += [f"![dose-response]({ev['dose_plot']})", ""]
    lines += [f"Demo finished in {s['seconds']} s.", ""]
    return "\n".join(lines)
