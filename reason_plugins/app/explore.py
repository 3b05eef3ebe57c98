"""``reason-sae explore --scores DIR [--model M --sae S]``: the live explorer of a scored run, served by
``vllm serve`` itself (the ``reason_explorer`` endpoint plugin in ``vllm_patches/explorer.py``).

This command reads the ReasonScore run (the SAELens adapter), writes the explorer's index (the ranked
features with their statistics, each feature's max activation in the SAE's own units, which is the
playground's strength unit, its decoder norm and top contexts, and the token-driven control verdict when
the run's views hold one), then starts ``vllm serve`` on the run's model with its SAE as the one
registered SAE, and prints the URL. It lives in the application layer because it joins the two adapters.
``--check`` starts the server, fetches the page and the index once and exits (0 when both answered).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from reason_plugins.cli_args import int_at_least

PLUGINS = "reason_steering,reason_steering_report,reason_explorer"
HIST_BINS = 40


def add_arguments(parser) -> None:
    parser.add_argument("--scores", required=True, help="a ReasonScore output directory (`reason-sae score --out`, demo_out/reason_score)")
    parser.add_argument("--model", default=None, help="model (default: the one the run scored)")
    parser.add_argument("--sae", default=None, help="SAE release or dir (default: the run's)")
    parser.add_argument("--data", default=None, help="token rows for max activations and contexts (default: the run's)")
    parser.add_argument("--views", default=None, help="the run's views dir, for control verdicts (default: DIR/../views when present)")
    parser.add_argument("--arms", default=None, metavar="RUN_DIR",
                        help="a finished multi-arm steered_vllm run (lm_eval --log_samples --output_path) for the Arms page")
    parser.add_argument("--top", type=int_at_least(1), default=100, help="features listed, best ReasonScore first (default 100)")
    parser.add_argument("--rows", type=int_at_least(1), default=32, help="token rows read for max activations and contexts (default 32)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int_at_least(1), default=8000)
    parser.add_argument("--api-key", default=None, help="vLLM's --api-key: /v1 (the data) needs it; the page asks for it once")
    parser.add_argument("--max-model-len", type=int_at_least(16), default=2048)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager, the fastest start on CPU)")
    parser.add_argument("--check", action="store_true", help="start, fetch the page and the index once, stop; exit 0 when both answered")


def _context_text(ctx: dict) -> str:
    tokens = list(ctx["tokens"])
    tokens[ctx["center"]] = f"[{tokens[ctx['center']]}]"
    return "".join(tokens)


def _control(views: Path | None) -> dict:
    path = views / "control.json" if views else None
    if not path or not path.is_file():
        return {}
    return {int(r["feature"]): {"verdict": r["verdict"], "token_r2": r.get("token_r2"), "context_ratio": r.get("context_ratio")}
            for r in json.loads(path.read_text()).get("features", [])}


def build_index(scores, *, model=None, sae=None, data=None, views=None, top: int = 100, rows: int = 32) -> dict:
    """The explorer's index of a scored run (JSON-able): what the Features and Feature pages show."""
    import torch

    from sae_lens_ext.views.contexts import top_contexts
    from sae_lens_ext.views.feature_activations import FeatureActivations
    from sae_lens_ext.views.scored_run import load_scored_run, run_inputs

    run = load_scored_run(scores)
    model, sae, data = run_inputs(run, model, sae, data)
    ranked = run.top(top)
    features = [r["feature"] for r in ranked]
    acts = FeatureActivations.open(model, sae, features, run=run)
    from reason_plugins.saes import load_sae

    raw_sae = load_sae(sae, run.config.get("sae_id"), "cpu", run.config.get("sae_loader"))
    dec = raw_sae.W_dec.detach().norm(dim=-1)
    ctx = {r["feature"]: r for r in top_contexts(None, None, data, features, run=run, n_samples=rows, n=5, window=8, progress=False, acts=acts)}
    control = _control(Path(views) if views else (Path(scores).parent / "views"))
    listed = []
    for rank, r in enumerate(ranked, 1):
        f = r["feature"]
        fold = float(dec[f])  # the views' activations have decoder norms folded in: raw = folded / norm (the engine's units)
        c = ctx[f]
        listed.append({**r, "rank": rank, "max_act": c["max_act"] / fold if fold > 0 else None, "decoder_norm": float(dec[f]),
                       "frequency": c["frequency"], "control": control.get(f),
                       "contexts": [{"activation": x["act"] / fold, "text": _context_text(x)} for x in c["top_contexts"]]})
    scores_t = run.result.scores.float()
    lo, hi = float(scores_t.min()), float(scores_t.max())
    counts = torch.histc(scores_t, bins=HIST_BINS, min=lo, max=hi if hi > lo else lo + 1)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1, HIST_BINS + 1)
    cfg = run.config
    return {"scores_dir": str(Path(scores).resolve()), "model": str(model), "sae": str(sae), "sae_id": cfg.get("sae_id"),
            "hook": acts.hook, "d_sae": int(raw_sae.cfg.d_sae), "rows_read": rows, "features": listed,
            "histogram": {"edges": edges.tolist(), "counts": [int(x) for x in counts.tolist()], "total": int(scores_t.numel()),
                          "threshold": ranked[-1]["score"] if ranked else None}}


def serve_command(index: dict, args) -> list[str]:
    vllm = str(Path(sys.executable).parent / "vllm")
    config = {"reason_steering": {"saes": [{"sae": index["sae"], "sae_id": index["sae_id"], "hook": index["hook"]}]}}
    cmd = [vllm, "serve", index["model"], "--host", args.host, "--port", str(args.port), "--served-model-name", "explore",
           "--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--max-num-seqs", "4", "--additional-config", json.dumps(config)]
    if not args.compile:
        cmd.append("--enforce-eager")
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    return cmd


def _get(url: str, key: str | None = None, timeout: float = 10) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


def wait_ready(base: str, proc, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(base + "/health", timeout=5)
            return
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited ({proc.returncode}) before it answered; its log is above")
        if time.monotonic() > deadline:
            raise SystemExit(f"vllm serve did not answer {base}/health within {timeout:.0f} s")
        time.sleep(1)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def plugin_registered() -> bool:
    """Whether vLLM can find the explorer's endpoint plugin (an install older than it cannot)."""
    from importlib.metadata import entry_points

    return any(ep.name == "reason_explorer" for ep in entry_points(group="vllm.endpoint_plugins"))


def run(args) -> int:
    if not Path(args.scores).is_dir():
        raise SystemExit(f"--scores {args.scores!r} is not a directory (expected a ReasonScore output directory, e.g. demo_out/reason_score)")
    missing = [n for n in ("run_config.json", "stats.safetensors") if not (Path(args.scores) / n).is_file()]
    if missing:
        raise SystemExit(f"--scores {args.scores!r} is not a ReasonScore output directory (missing {missing}; "
                         "write one with `reason-sae score --out DIR` or `reason-sae demo`)")
    if args.arms is not None and not Path(args.arms).exists():
        raise SystemExit(f"--arms {args.arms!r} does not exist (expected an lm_eval --output_path of a multi-arm steered_vllm run)")
    if not plugin_registered():
        raise SystemExit("vLLM finds no 'reason_explorer' endpoint plugin: this install predates it "
                         "(reinstall the package: `pip install --no-deps -e .` or `make setup`)")
    print(f"explore: reading {args.scores} (top {args.top} features, max activations over {args.rows} rows)", file=sys.stderr)
    index = build_index(args.scores, model=args.model, sae=args.sae, data=args.data, views=args.views, top=args.top, rows=args.rows)
    tmp = tempfile.TemporaryDirectory(prefix="reason-explore-")
    if args.arms:
        from reason_plugins.app.explore_arms import arms_index

        index["arms"] = arms_index(args.arms, tmp.name)
    index_path = Path(tmp.name) / "index.json"
    index_path.write_text(json.dumps(index))
    env = dict(os.environ, VLLM_PLUGINS=PLUGINS, REASON_EXPLORE_INDEX=str(index_path))
    env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://{host}:{args.port}"
    proc = subprocess.Popen(serve_command(index, args), env=env, stdout=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupted)  # a `kill` stops the server too (the finally below), not only Ctrl-C
    try:
        wait_ready(base, proc)
        print(f"explorer: {base}/explore/", flush=True)
        if args.check:
            page = _get(base + "/explore/")
            listed = json.loads(_get(base + "/v1/explore/index", args.api_key))["features"]
            print(f"explore --check: page {len(page)} bytes, {len(listed)} features listed", flush=True)
            return 0
        return proc.wait()
    finally:
        if proc.poll() is None:  # SIGINT: vllm serve's own orderly stop (Ctrl-C); SIGTERM makes it print the engine's death
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()
