"""The steering op alone against one decoder layer, at DeepSeek-R1-Distill-Llama-8B size
(d = 4096, intermediate 14336, 32/8 heads, d_sae = 65,536): the op's cost curve over the number
of catalogue slots (distinct feature rows active on every token), plus its idle and reconstruct
paths.

    python benchmarks/steering_op.py [--tokens 256] [--slots 1 16 64 128] [--device cpu|cuda]
                                     [--dtype float32|bfloat16] [--repeats N] [--no-reconstruct]

Measured with the same helper as ``gpu_check.py`` (``op_bench.py``): on CUDA every variant is
captured in a CUDA graph and replayed, as vLLM runs it; on CPU they run eagerly (in vLLM the CPU
path is compiled with the model). Variants, timed side by side in one run:
- decoder layer: HF ``LlamaDecoderLayer`` forward (attention over the batch as one sequence);
- op, every row steered, S slots: the opaque op's delta path with S catalogue rows active;
- op, idle: no steered token in the step. CPU: the fused path's false branch (a copy of
  ``hidden``) and the opaque op's early exit. CUDA: a captured graph cannot take the early exit,
  so an unsteered step pays the full rows path over all-zero edit tables (the S-slot rows above);
- op, reconstruct: the full 65,536-feature TopK SAE encode/decode on every token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from op_bench import LLAMA_8B, Replay, make_op, markdown, median_seconds, op_timing_closure, op_vs_layer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 16, 64, 128],
                        help="catalogue sizes (distinct feature rows active on every token)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-reconstruct", action="store_true", help="skip the full-SAE variant (slow on CPU)")
    args = parser.parse_args()
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    repeats = args.repeats or (50 if device == "cuda" else 5)
    d, n, d_sae = LLAMA_8B["hidden_size"], args.tokens, 65536

    rows = op_vs_layer(LLAMA_8B, [n], args.slots, dtype, device, repeats)
    layer_ms = rows[0]["ms"]

    def extra(variant, op, run=None):
        ms = median_seconds(Replay(run or op_timing_closure(op, n, dtype, device), device).run, device, repeats) * 1e3
        rows.append({"tokens": n, "variant": variant, "slots": op.enc_t.shape[1], "ms": ms, "vs_layer": ms / layer_ms})

    if device == "cpu":  # the idle step: no steered token (on CUDA a graph always runs the full path)
        x, residual = torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype)
        for fused, name in ((True, "op, idle, fused (torch.cond false branch: copies hidden; CPU default)"),
                            (False, "op, idle, opaque (early exit)")):
            op = make_op(d, 16, n, dtype, device, fused=fused)
            op.set_active(False)
            extra(name, op, lambda op=op: op(x, residual))
        op = make_op(d, 16, n, dtype, device, fused=True)
        extra("op, every row steered, fused", op)
    if not args.no_reconstruct:
        from sae_lens import TopKSAE, TopKSAEConfig

        sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=64, dtype=str(dtype).split(".")[-1], device=device))
        sae = sae.to(device, dtype).eval()
        rec = make_op(d, 16, n, dtype, device, sae=sae)
        rec.set_active(False, True)
        rec.rec_feature[:8] = torch.arange(8, device=device) * 1000
        rec.rec_a[:8], rec.rec_b[:8], rec.rec_mask[:, :8] = -1.0, 5.0, 1.0
        x, residual = torch.randn(n, d, device=device, dtype=dtype), torch.randn(n, d, device=device, dtype=dtype)
        extra("op, reconstruct (full 65k TopK SAE, 8 edits)", rec, lambda: rec(x, residual))

    graphs = " (CUDA graphs)" if device == "cuda" else " (eager)"
    print(f"\n{n} tokens, d={d}, d_sae={d_sae}, {dtype}, {device}{graphs}; median of {repeats}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
