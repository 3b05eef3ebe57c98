"""The steering op alone against one decoder layer, at DeepSeek-R1-Distill-Llama-8B size
(d = 4096, intermediate 14336, 32/8 heads, d_sae = 65,536), batch of 256 tokens.

    python benchmarks/steering_op.py [--tokens 256] [--device cpu|cuda] [--dtype float32|bfloat16]

Variants, timed side by side in one run:
- decoder layer: HF ``LlamaDecoderLayer`` forward (attention over the batch as one sequence);
- op, idle: no steered token in the step. CPU: the fused path's false branch (a copy of
  ``hidden``) and the opaque op's early exit. CUDA: the full delta path over all-zero edit tables,
  since a captured graph cannot take the early exit (what an unsteered step pays under CUDA graphs);
- op, 8 edits (delta): 8 catalogued feature rows active on every token;
- op, reconstruct: the full 65,536-feature SAE encode/decode (TopK path), on every token.
On CUDA each variant is captured in a CUDA graph and replayed, as vLLM runs it; on CPU they run
eagerly (in vLLM the fused path is compiled with the model).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, device, repeats: int) -> float:
    """Median seconds per call (CUDA: graph-captured replay)."""
    if device == "cuda":
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
    else:
        fn()
        run = fn
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    repeats = args.repeats or (50 if device == "cuda" else 5)
    from sae_lens import TopKSAE, TopKSAEConfig
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from vllm_patches.op import SteeringOp

    torch.manual_seed(0)
    d, d_sae, n = 4096, 65536, args.tokens
    cfg = LlamaConfig(hidden_size=d, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, layer_idx=0).to(device, dtype).eval()
    rope = LlamaRotaryEmbedding(cfg).to(device)
    hidden = torch.randn(1, n, d, device=device, dtype=dtype)
    positions = torch.arange(n, device=device)[None]
    cos_sin = rope(hidden, positions)

    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=64, dtype=str(dtype).split(".")[-1], device=device)).to(device, dtype).eval()
    def rows_op(fused: bool, edits: int) -> SteeringOp:
        op = SteeringOp(d, 16, n, 256, dtype, device, prefer_fused=fused)
        op.enc_t[:, :edits] = torch.randn(d, edits, device=device, dtype=dtype)
        op.dec[:edits] = torch.randn(edits, d, device=device, dtype=dtype)
        op.edit_a[:, :edits], op.edit_b[:, :edits] = -1.0, 5.0
        op.set_active(edits > 0)
        return op

    rec = SteeringOp(d, 16, n, 256, dtype, device, sae=sae)
    rec.set_active(False, True)
    rec.rec_feature[:8] = torch.arange(8) * 1000
    rec.rec_a[:8], rec.rec_b[:8], rec.rec_mask[:, :8] = -1.0, 5.0, 1.0
    x, residual = hidden[0], torch.randn(n, d, device=device, dtype=dtype)
    if device == "cuda":  # the opaque op; a captured graph always holds its full rows path
        ops = {"op, idle in a CUDA graph (zero edit tables, 16 slots)": rows_op(False, 0),
               "op, 8 edits (delta)": rows_op(False, 8)}
    else:
        ops = {"op, idle, fused (torch.cond: copies hidden; CPU default)": rows_op(True, 0),
               "op, 8 edits (delta), fused": rows_op(True, 8),
               "op, idle, opaque (early exit)": rows_op(False, 0),
               "op, 8 edits (delta), opaque": rows_op(False, 8)}
    ops["op, reconstruct (full 65k SAE)"] = rec

    results = {}
    with torch.no_grad():
        results["decoder layer (8B)"] = timed(lambda: layer(hidden, attention_mask=None, position_embeddings=cos_sin,
                                                              position_ids=positions), device, repeats)
        for name, op in ops.items():
            results[name] = timed(lambda: op(x, residual), device, repeats)
    base = results["decoder layer (8B)"]
    print(f"\n{n} tokens, d={d}, d_sae={d_sae}, {dtype}, {device}{' (CUDA graphs)' if device == 'cuda' else ''}; median of {repeats}")
    print("| variant | ms | vs one decoder layer |\n|---|---|---|")
    for name, sec in results.items():
        print(f"| {name} | {sec * 1e3:.2f} | {sec / base:.2%} |")


if __name__ == "__main__":
    main()
