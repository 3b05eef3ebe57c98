"""Steering sweep: one SAE feature steered at a list of strengths through the real vLLM engine
(``vllm_patches.llm.SteeredLLM``), measuring how many reasoning words the outputs contain and how
long they get — the paper's "does steering this feature make the model think more?" plot.

One engine; every (strength, prompt) pair plus an unsteered baseline per prompt is one request in
a single ``generate`` batch (the plugin maps each request to its own spec). Greedy by default, so a
rerun gives the same numbers. Writes ``sweep.json`` (summary + every output with what the engine
reports it applied) and ``sweep.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from reason_plugins.figures import pyplot
from reason_plugins.files import write_json_atomic
from reason_plugins.spec import check_feature_index


def default_prompts(n: int = 4) -> list[str]:
    """Problems from the synthetic corpus (what the fixture models were trained on)."""
    from reason_plugins.corpus import reasoning_examples

    return [ex["problem"] for ex in reasoning_examples(n, seed=123)]


def sweep_requests(feature: int, values, prompts, *, sae: str, hook: str, sae_id=None, mode="set", method="delta",
                   condition: dict | None = None):
    """[(value or None, prompt index, spec or None)]: the baseline of each prompt, then every value (each spec
    with the same ``condition`` fields: a window, the think section, a gate)."""
    from reason_plugins.spec import parse_spec

    values = [float(v) for v in values]
    if not values:
        raise ValueError("a sweep needs at least one steering value")
    out = [(None, i, None) for i in range(len(prompts))]
    for v in values:
        spec = parse_spec({"sae": str(sae), "sae_id": sae_id, "hook": hook, "method": method,
                           "edits": [{"feature": int(feature), "mode": mode, "value": v}], **(condition or {})}).to_dict()
        out += [(v, i, spec) for i in range(len(prompts))]
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Mean reasoning words / length per value (None = unsteered), baseline first, then by value."""
    by = {}
    for r in rows:
        by.setdefault(r["value"], []).append(r)
    keys = sorted(by, key=lambda v: (v is not None, v if v is not None else 0.0))
    return [{"value": v, "reasoning_words": sum(r["reasoning_words"] for r in by[v]) / len(by[v]),
             "length": sum(r["length"] for r in by[v]) / len(by[v]), "n": len(by[v])} for v in keys]


def run_sweep(model_dir, sae_dir, hook, feature, values, prompts, out_dir, *, sae_id=None, mode: str = "set", method=None,
              max_tokens: int = 64, temperature: float = 0.0, eager: bool = True, chat_template: bool = True,
              vocabulary="paper", max_model_len: int | None = None, llm=None, force_hook: bool = False,
              condition: dict | None = None, **llm_kwargs) -> dict:
    """Run the sweep and write ``sweep.json`` / ``sweep.png`` under ``out_dir``; returns
    ``{"json", "png", "summary", "outputs"}``. ``llm``: an existing ``SteeredLLM`` configured with this
    SAE at ``hook`` (else one is started; ``eager`` skips torch.compile: on CPU the answer comes soonest). The
    specs are validated against the SAE and the model's config first (``vllm_patches.preflight``;
    ``force_hook`` allows a hook other than the SAE's own)."""
    from reason_plugins.figures import write_figure_atomic
    from reason_plugins.saes import default_method, sae_shape
    from reason_plugins.vocabulary import count_reasoning_words

    shape = sae_shape(str(sae_dir), sae_id)
    check_feature_index(feature, shape["d_sae"])
    if not prompts:
        raise ValueError("a sweep needs at least one prompt")
    method = method or default_method(shape)
    requests = sweep_requests(feature, values, prompts, sae=str(sae_dir), hook=hook, sae_id=sae_id, mode=mode, method=method,
                              condition=condition)
    from vllm_patches.preflight import preflight

    for spec in {json.dumps(s, sort_keys=True): s for _, _, s in requests if s is not None}.values():
        preflight(str(model_dir), [spec], force_hook=force_hook)  # each distinct request's spec, before the engine
    from vllm import SamplingParams

    if llm is None:
        from vllm_patches.llm import SteeredLLM

        llm_kwargs.setdefault("dtype", "float32")
        llm_kwargs.setdefault("seed", 0)
        llm_kwargs.setdefault("max_num_seqs", len(requests))  # one batch: the KV cache is sized for it
        if max_model_len:
            llm_kwargs["max_model_len"] = max_model_len
        llm = SteeredLLM(str(model_dir), saes=[{"sae": str(sae_dir), "sae_id": sae_id, "hook": hook}], enforce_eager=eager, **llm_kwargs)
    texts = llm.chat_prompts(prompts) if chat_template else list(prompts)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0)
    outputs = llm.generate([texts[i] for _, i, _ in requests], params, steering=tuple(s for _, _, s in requests))
    applied = llm.applied(outputs)
    rows = []
    for (value, i, spec), out, rec in zip(requests, outputs, applied):
        if spec is not None and rec is None:
            raise RuntimeError(f"request for value {value} ran unsteered although a spec was sent: {spec}")
        text = out.outputs[0].text
        rows.append({"value": value, "prompt": prompts[i], "text": text, "length": len(out.outputs[0].token_ids),
                     "reasoning_words": sum(count_reasoning_words(text, vocabulary).values()), "applied": rec})
    data = {"model": str(model_dir), "sae": str(sae_dir), "sae_id": sae_id, "hook": hook, "feature": int(feature), "mode": mode,
            "method": method, "values": [float(v) for v in values], "max_tokens": max_tokens, "temperature": temperature,
            "summary": summarize(rows), "outputs": rows}
    out_dir = Path(out_dir)
    return {"json": write_json_atomic(out_dir / "sweep.json", data), "png": write_figure_atomic(sweep_figure(data), out_dir / "sweep.png"),
            "summary": data["summary"], "outputs": rows}


def markdown_table(summary: list[dict]) -> str:
    lines = ["| value | reasoning words / output | length (tokens) | outputs |", "|---|---|---|---|"]
    for r in summary:
        value = "unsteered" if r["value"] is None else f"{r['value']:g}"
        lines.append(f"| {value} | {r['reasoning_words']:.2f} | {r['length']:.1f} | {r['n']} |")
    return "\n".join(lines) + "\n"


def sweep_figure(data: dict):
    """Mean reasoning-word count and mean trace length (tokens) against the steering value."""
    plt = pyplot()
    rows = [r for r in data["summary"] if r["value"] is not None]
    base = next((r for r in data["summary"] if r["value"] is None), None)
    xs = [r["value"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((a1, "reasoning_words", "reasoning words per output"), (a2, "length", "output length (tokens)")):
        ax.plot(xs, [r[key] for r in rows], marker="o", color="tab:red", label=f"{data['mode']} feature {data['feature']}")
        if base is not None:
            ax.axhline(base[key], color="k", ls="--", lw=0.8, label="unsteered")
        ax.set(xlabel="steering value", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(f"Steering sweep at {data['hook']}")
    fig.tight_layout()
    return fig
