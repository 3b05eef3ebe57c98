"""What the engine benchmarks share: the model and SAE they run on, built under a temp dir: the tiny fixture Llama (4 layers,
d 128) with a fitted standard SAE (d_sae 256) at block 2, or the packaged SmolLM2-135M-Instruct (30 layers,
d 576) with a random-weight standard SAE (d_sae 2304) at block 18 (engine costs do not depend on weights)."""

from __future__ import annotations

from pathlib import Path

HOOK = "blocks.2.hook_resid_post"
REAL_HOOK = "blocks.18.hook_resid_post"


def model_and_sae(root: Path, real: bool) -> tuple[str, str, str]:
    """(model dir, SAE dir, hook)."""
    if real:
        from sae_lens import StandardSAE, StandardSAEConfig

        from reason_plugins.models import resolve_model

        random_sae = StandardSAE(StandardSAEConfig(d_in=576, d_sae=2304))
        random_sae.cfg.metadata.hook_name = REAL_HOOK
        random_sae.save_model(str(root / "sae"))
        return str(resolve_model("smollm2-135m-instruct")), str(root / "sae"), REAL_HOOK
    from reason_plugins import tiny_models
    from sae_lens_ext.training import tiny_saes

    tok = tiny_models.build_tokenizer(root / "tok")
    model = tiny_models.build_model(root / "llama", tok)
    sae = tiny_saes.build_saes(model, tok, root / "saes", hook_name=HOOK, architectures=("standard",))["standard"]
    return str(model), str(sae), HOOK


def report_interleaved(variants: dict, run, repeats: int) -> None:
    """Warm each variant up, then time ``run(variant)`` ``repeats`` times, the variants interleaved, and print
    ``RESULT {name: [decode tokens/s, ...]}`` for the parent process."""
    import json
    import time

    for value in variants.values():
        run(value)
    results = {name: [] for name in variants}
    for _ in range(repeats):
        for name, value in variants.items():
            start = time.perf_counter()
            outputs = run(value)
            elapsed = time.perf_counter() - start
            results[name].append(sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed)
    print("RESULT " + json.dumps(results), flush=True)


def engine_parser(doc: str, max_tokens: int):
    """The options every engine benchmark takes (``--child``, ``--model``, ``--sae``, ``--hook``: the parent's to
    its child process)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct and a random SAE at block 18")
    parser.add_argument("--model")
    parser.add_argument("--sae")
    parser.add_argument("--hook", default=HOOK)
    return parser


def child_results(cmd: list) -> dict:
    """Run a benchmark's child process; its ``RESULT`` line as a dict."""
    import json
    import subprocess

    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def one_engine(doc: str, script: str, child, prefix: str, max_tokens: int = 128):
    """A benchmark of variants inside one engine: as the child (``--child``), run ``child(args)`` and return None;
    as the parent, build the model and SAE, run the child process and return ``(args, its results)``."""
    import sys
    import tempfile

    parser = engine_parser(doc, max_tokens)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args)
        return None
    model, sae, args.hook = model_and_sae(Path(tempfile.mkdtemp(prefix=prefix)), args.real)
    return args, child_results([sys.executable, script, "--child", "--model", str(model), "--sae", str(sae), "--prompts",
                                str(args.prompts), "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats),
                                "--hook", args.hook])


def tiny_model_and_random_sae(root: Path, d_sae: int, hook: str = HOOK, init=None, **metadata) -> tuple[str, str]:
    """The tiny fixture Llama and a seeded random standard SAE (d_in 128) at ``hook``: (model dir, SAE dir).
    ``init(sae)`` may set weights (under no_grad); ``metadata``: extra SAE metadata (e.g. context_size)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    from reason_plugins import tiny_models

    model = tiny_models.build_model(root / "llama", tiny_models.build_tokenizer(root / "tokenizer"))
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=d_sae))
    if init is not None:
        with torch.no_grad():
            init(sae)
    sae.cfg.metadata.hook_name = hook
    for key, value in metadata.items():
        setattr(sae.cfg.metadata, key, value)
    sae.save_model(str(root / "sae"))
    return str(model), str(root / "sae")
