"""Part e of the GPU check kit: hotwire-vllm (a Triton steering op kept inside CUDA graphs, a GPU-only
peer) beside us, on a lent GPU only. The same vector, layer and scale go through a hotwire engine and
through ours (each in its own process, only its own plugin enabled: ``VLLM_PLUGINS``) on the tiny fixture
Llama (built on the machine: nothing to download), float32, CUDA graphs on, 8 prompts, greedy:

- TPOT (ms per decode step) with nobody steered and with every request steered, for each engine;
- the steered tokens equal across the two engines (and the plain ones).

hotwire is not installed in our environment: its wheel is carried to the device (fetch it beside the
repository with ``pip download --no-deps hotwire-vllm==0.1.2 -d wheels``, and carry ``wheels``) and
installed into a scratch folder for its process only. Without a GPU, vLLM or the wheel the part says
why it was skipped and changes nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

LAYER, SCALE, PROMPTS = 2, 4.0, 8
DEFAULT_WHEEL = Path(__file__).resolve().parents[1] / "wheels" / "hotwire_vllm-0.1.2-py3-none-any.whl"


def run_check(device: str, work: Path, wheel: Path | None = None, max_tokens: int = 128) -> dict:
    """The part's figures, or ``{"skipped": why}``."""
    import importlib.util

    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed"}
    wheel = Path(wheel or DEFAULT_WHEEL)
    if not wheel.is_file():
        return {"skipped": f"no hotwire wheel at {wheel} (pip download --no-deps hotwire-vllm==0.1.2 -d wheels; carry wheels)"}
    from reason_plugins import tiny_models

    work.mkdir(parents=True, exist_ok=True)
    target = work / "hotwire_site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    model = tiny_models.build_model(work / "llama", tiny_models.build_tokenizer(work / "tok"))
    d = json.loads((Path(model) / "config.json").read_text())["hidden_size"]
    vector = torch.nn.functional.normalize(torch.randn(d, generator=torch.Generator().manual_seed(0)), dim=0)
    (work / "vectors").mkdir(exist_ok=True)
    torch.save(vector, work / "vectors" / "peer.pt")
    out = {"model": "tiny fixture Llama", "layer": LAYER, "scale": SCALE, "prompts": PROMPTS, "max_tokens": max_tokens}
    env = {**os.environ, "HOTWIRE_VECTORS": str(work / "vectors")}
    for engine, plugin, path in (("hotwire", "hotwire", str(target)), ("ours", "reason_steering", "")):
        child_env = {**env, "VLLM_PLUGINS": plugin,
                     "PYTHONPATH": os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)}
        res = subprocess.run([sys.executable, __file__, engine, str(model), str(work / "vectors" / "peer.pt"), str(max_tokens)],
                             capture_output=True, text=True, env=child_env, timeout=1200)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
        if res.returncode != 0 or line is None:
            return {**out, "failed": f"{engine}: exit {res.returncode}: {res.stderr[-1500:]}"}
        out[engine] = json.loads(line[7:])
    out["steered_tokens_equal"] = out["hotwire"].pop("steered") == out["ours"].pop("steered")
    out["plain_tokens_equal"] = out["hotwire"].pop("plain") == out["ours"].pop("plain")
    out["steering_changed_tokens"] = out["hotwire"].pop("changed") and out["ours"].pop("changed")
    return out


def report_lines(r: dict) -> list[str]:
    if "skipped" in r:
        return ["", f"e. hotwire-vllm beside us: skipped: {r['skipped']}"]
    if "failed" in r:
        return ["", f"e. hotwire-vllm beside us: FAILED to run: {r['failed']}"]
    lines = ["", f"e. hotwire-vllm beside us ({r['model']}, layer {r['layer']}, scale {r['scale']}, {r['prompts']} prompts, "
                 f"{r['max_tokens']} tokens, float32, CUDA graphs):"]
    for engine in ("hotwire", "ours"):
        e = r[engine]
        lines.append(f"   {engine}: TPOT idle {e['tpot_idle_ms']:.3f} ms, all steered {e['tpot_steered_ms']:.3f} ms")
    lines.append(f"   steered tokens equal: {r['steered_tokens_equal']}; plain tokens equal: {r['plain_tokens_equal']}; "
                 f"steering changed the tokens: {r['steering_changed_tokens']}")
    return lines


def _child(engine: str, model: str, vector_path: str, max_tokens: int) -> None:
    import torch
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": [1] + [(5 * i + 3 * j) % 200 + 10 for j in range(23)]} for i in range(PROMPTS)]
    kwargs = dict(dtype="float32", max_model_len=512, seed=0, gpu_memory_utilization=0.3)
    if engine == "ours":
        from vllm_patches.llm import SteeredLLM

        llm = SteeredLLM(model, vector_hooks=[f"blocks.{LAYER}.hook_resid_post"], **kwargs)
        spec = {"vector": torch.load(vector_path).tolist(), "hook": f"blocks.{LAYER}.hook_resid_post", "coefficient": SCALE}

        def generate(params, steered):
            return llm.generate(prompts, params, steering=spec if steered else None, use_tqdm=False)
    else:
        llm = LLM(model, **kwargs)
        wire = {"hotwire": json.dumps({"id": "peer", "layer": LAYER, "scale": SCALE})}

        def generate(params, steered):
            params.extra_args = wire if steered else None
            return llm.generate(prompts, params, use_tqdm=False)

    def run(tokens: int, steered: bool):
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        outs = generate(params, steered)
        return time.perf_counter() - start, [list(o.outputs[0].token_ids) for o in outs]

    result = {}
    for name, steered in (("idle", False), ("steered", True)):
        run(max_tokens, steered)  # warm-up
        first, _ = run(1, steered)
        full, tokens = run(max_tokens, steered)
        result[f"tpot_{name}_ms"] = (full - first) / (max_tokens - 1) * 1e3
        result["plain" if name == "idle" else "steered"] = tokens
    result["changed"] = result["plain"] != result["steered"]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
