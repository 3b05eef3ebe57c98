"""``reason-sae steer``: one prompt, baseline vs steered, through the real vLLM engine (greedy by
default), side by side or as one JSON object. The spec is validated against the SAE and the
model's config (``preflight``) before the engine starts."""

from __future__ import annotations

import json
import shutil
import textwrap

from reason_plugins.cli_args import add_engine_mode_arguments, enforce_eager, finite_float, int_at_least
from reason_plugins.spec import METHODS, MODES


def _gate(text: str) -> dict:
    import argparse

    feature, _, above = text.partition(":")
    try:
        return {"feature": int(feature), "above": float(above)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURE:ABOVE (e.g. 1732:0.5), got {text!r}") from None


def add_condition_arguments(parser) -> None:
    """Where the edit applies (the spec's condition fields), for ``steer`` and ``sweep``."""
    parser.add_argument("--from-token", type=int_at_least(0), default=None,
                        help="steer from generated token N on (0: the first generated token the model reads)")
    parser.add_argument("--to-token", type=int_at_least(1), default=None, help="steer up to, not including, generated token N")
    parser.add_argument("--only-in", choices=["think"], default=None, help="steer only inside <think> ... </think>")
    parser.add_argument("--when", type=_gate, default=None, metavar="FEATURE:ABOVE",
                        help="steer only at tokens where this feature of the same SAE (read before the edit) is above ABOVE")


def condition_fields(args) -> dict:
    """The spec's condition fields from ``add_condition_arguments``'s options (only those given)."""
    fields = {"from_token": args.from_token, "to_token": args.to_token, "only_in": args.only_in, "when": args.when}
    return {k: v for k, v in fields.items() if v is not None}


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="HF model name or local dir")
    parser.add_argument("--sae", required=True, help="SAE release or local dir")
    parser.add_argument("--sae-id", default=None)
    parser.add_argument("--hook", default=None, help="blocks.L.hook_resid_post (default: the SAE's own hook)")
    parser.add_argument("--feature", type=int_at_least(0), required=True, action="append", help="feature index (repeatable)")
    parser.add_argument("--value", type=finite_float(), required=True, action="append", help="edit value (one per --feature, or one for all)")
    parser.add_argument("--mode", choices=MODES, default="set")
    parser.add_argument("--method", choices=METHODS, default=None, help="default: delta, or reconstruct for TopK SAEs")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--raw", action="store_true", help="do not apply the model's chat template to the prompt")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=256)
    parser.add_argument("--temperature", type=finite_float(0), default=0.0, help="default 0: greedy")
    parser.add_argument("--decode-only", action="store_true", help="leave the prompt's tokens unsteered")
    add_condition_arguments(parser)
    add_engine_mode_arguments(parser)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="engine dtype (default auto: vLLM's CPU backend then runs a float32 model in bfloat16); the one that ran is printed")
    parser.add_argument("--readout", default=None, metavar="JSON",
                        help="read SAE features of both requests too: a readout spec or a list of them, e.g. "
                             "'{\"sae\": SAE, \"hook\": HOOK, \"features\": [5, 9]}' or '{..., \"top_k\": 8}'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--force-hook", action="store_true", help="allow --hook to differ from the hook the SAE was trained on")


def run(args) -> int:
    import os

    # vLLM logs to stdout by default; keep stdout for our output (`--json | jq` must work)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from reason_plugins.spec import parse_spec
    from vllm_patches.preflight import preflight, sae_info

    if len(args.value) not in (1, len(args.feature)):
        raise SystemExit(f"give one --value for all features or one per --feature ({len(args.feature)}), got {len(args.value)}")
    if not args.prompt.strip():
        raise SystemExit("--prompt is empty (expected a prompt text)")
    values = args.value * len(args.feature) if len(args.value) == 1 else args.value
    from reason_plugins.saes import default_method

    info = sae_info(args.sae, args.sae_id)
    hook = args.hook or info["hook"]
    method = args.method or default_method(info)
    spec = parse_spec({"sae": args.sae, "sae_id": args.sae_id, "hook": hook, "method": method, "decode_only": args.decode_only,
                       "edits": [{"feature": f, "mode": args.mode, "value": v} for f, v in zip(args.feature, values)],
                       **condition_fields(args)}).to_dict()
    from reason_plugins.readout import parse_readout

    readout = [r.to_dict() for r in parse_readout(args.readout)] if args.readout else None
    # before the engine: a refusal costs seconds, not a start-up
    preflight(args.model, [spec], readouts=readout, force_hook=args.force_hook)
    from vllm_patches.llm import SteeredLLM
    from vllm_patches.preflight import engine_saes

    # two requests (baseline, steered): the KV cache is sized for two sequences; an engine that cannot start
    # for lack of memory is refused before vLLM is imported
    llm = SteeredLLM(args.model, saes=engine_saes([spec], readout), enforce_eager=enforce_eager(args), dtype=args.dtype,
                     max_num_seqs=2)
    from vllm import SamplingParams

    prompt = args.prompt if args.raw else llm.chat_prompts([args.prompt])[0]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=0)
    baseline, steered = llm.generate([prompt, prompt], params, steering=(None, spec), readout=readout)
    result = {"baseline": baseline.outputs[0].text, "steered": steered.outputs[0].text,
              "baseline_token_ids": list(baseline.outputs[0].token_ids), "steered_token_ids": list(steered.outputs[0].token_ids),
              "applied": llm.applied([steered])[0], "spec": spec, "dtype": llm.dtype}
    if readout is not None:
        result["readout"] = dict(zip(("baseline", "steered"), _plain(llm.readout([baseline, steered]))))
    if args.json:
        print(json.dumps(result))
        return 0
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    left = textwrap.wrap(result["baseline"], width) or [""]
    right = textwrap.wrap(result["steered"], width) or [""]
    print(f"{'baseline':<{width}} | steered ({', '.join(f'#{f} {args.mode} {v:g}' for f, v in zip(args.feature, values))}, {method})")
    print("-" * width + "-+-" + "-" * width)
    for i in range(max(len(left), len(right))):
        print(f"{left[i] if i < len(left) else '':<{width}} | {right[i] if i < len(right) else ''}")
    applied = result["applied"] or {}
    gate = f", the gate let {applied['gate_passed']} through" if "gate_passed" in applied else ""
    print(f"\ndtype: {result['dtype']}; applied: spec {applied.get('spec_hash')}, layers {applied.get('layers')}, "
          f"{applied.get('tokens')} tokens{gate}, mean |delta| {applied.get('mean_abs_delta', 0):.4g}")
    for side, read in result.get("readout", {}).items():
        for hook, r in (read.items() if "positions" not in read else [(None, read)]):
            if "activations" in r:
                means = [sum(col) / max(1, len(col)) for col in zip(*r["activations"])]
                text = ", ".join(f"#{f} {m:.3g}" for f, m in zip(r["features"], means))
            else:
                text = f"top-{len(r['top_k']['indices'][0]) if r['top_k']['indices'] else 0} read at {len(r['positions'])} positions"
            print(f"readout ({side}{', ' + hook if hook else ''}): mean over {len(r['positions'])} tokens: {text}")
    return 0


def _plain(value):
    """numpy arrays -> lists, for JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
