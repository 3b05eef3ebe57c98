"""The steering-op benchmark pieces shared by ``steering_op.py`` and ``gpu_check.py``, so that both
measure the same thing the same way: a Llama-3.1-8B-shaped decoder layer, a steering op with a
given number of catalogue slots (distinct feature rows) active on the steered rows, and a timer
that on CUDA captures the call in a CUDA graph and replays it (as vLLM runs the model) and on CPU
calls it eagerly.

Written against today's op constructor ``SteeringOp(d_model, max_slots, max_tokens, max_requests,
dtype, device, ...)``; ``make_op`` is the one place to adapt when it changes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# DeepSeek-R1-Distill-Llama-8B = Llama-3.1-8B: d 4096, MLP 14336, 32 query / 8 key-value heads
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
# the same layout, small enough for a CPU smoke run (--quick)
TINY = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Replay:
    """``fn`` as it will be run: captured once in a CUDA graph and replayed (CUDA), or called (CPU).
    A captured graph reads and writes the same tensors on every replay, so callers rewrite the
    inputs and buffers in place between runs."""

    def __init__(self, fn: Callable[[], object], device, warmup: int = 3, required: bool = True):
        self.graph, self.captured, self.error = None, False, None
        if torch.device(device).type == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            sync(device)
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
            except RuntimeError as exc:  # e.g. a host sync inside fn; timing may go on eagerly
                if required:
                    raise
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                sync(device)
                fn()
                self.run = fn
                return
            self.graph, self.captured, self.run = graph, True, graph.replay
        else:
            fn()
            self.run = fn


def median_seconds(run: Callable[[], object], device, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, each synchronised."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_layer(shape: dict, tokens: int, dtype, device, seed: int = 0):
    """A random-weight HF ``LlamaDecoderLayer`` of ``shape`` and a closure running it over one
    sequence of ``tokens`` tokens (static input, fresh output: capturable)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, max_position_embeddings=max(8192, tokens))
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, layer_idx=0).to(device, dtype).eval()
    hidden = torch.randn(1, tokens, shape["hidden_size"], device=device, dtype=dtype)
    positions = torch.arange(tokens, device=device)[None]
    cos_sin = LlamaRotaryEmbedding(cfg).to(device)(hidden, positions)

    def run():
        with torch.no_grad():
            return layer(hidden, attention_mask=None, position_embeddings=cos_sin, position_ids=positions)
    return layer, run


def make_op(d: int, slots: int, tokens: int, dtype, device, *, fused: bool = False, sae=None, max_requests: int = 256):
    """A steering op with a catalogue of ``slots`` feature rows over ``tokens`` token rows."""
    from vllm_patches.engine.op import SteeringOp

    return SteeringOp(d, slots, tokens, max_requests, dtype, device, sae=sae, prefer_fused=fused)


def fill_rows(op, active: int, generator: torch.Generator, *, jump: bool = True) -> None:
    """Random unit-scale encoder/decoder rows in the first ``active`` slots, the rest zero; gates:
    alternately -inf (``direction``), 0 (ReLU) and a positive JumpReLU threshold."""
    d = op.enc_t.shape[0]
    dev, dt = op.enc_t.device, op.enc_t.dtype

    def rnd(*size):
        return (torch.randn(*size, generator=generator) / d ** 0.5).to(dev, dt)
    op.enc_t.zero_(), op.dec.zero_(), op.bias.zero_(), op.gate.zero_()
    op.enc_t[:, :active] = rnd(d, active)
    op.dec[:active] = rnd(active, d) * d ** 0.5 / 4
    op.bias[:active] = rnd(active) * 0.1
    gates = torch.tensor([float("-inf"), 0.0, 0.05 if jump else 0.0])[torch.arange(active) % 3]
    op.gate[:active] = gates.to(dev, dt)


def fill_edits(op, steered_rows: torch.Tensor, active: int, generator: torch.Generator) -> None:
    """Edit constants (``f' = f + a f + b``: set / scale / add mixes) for the first ``active`` slots
    on the rows where ``steered_rows`` is true, zero elsewhere (rows of unsteered requests)."""
    n = op.edit_a.shape[0]
    a = torch.zeros(n, op.edit_a.shape[1])
    b = torch.zeros_like(a)
    a[:, :active] = torch.randint(-1, 2, (n, active), generator=generator).float() * 0.5  # -0.5, 0, 0.5
    b[:, :active] = torch.randn(n, active, generator=generator)
    keep = steered_rows.float()[:, None].cpu()
    op.edit_a.copy_((a * keep).to(op.edit_a.dtype))
    op.edit_b.copy_((b * keep).to(op.edit_b.dtype))


def op_timing_closure(op, tokens: int, dtype, device, seed: int = 0):
    """The op over ``tokens`` rows of a static (hidden, residual) pair, steering every row with
    every catalogue slot (an add-mode edit, so repeated runs stay bounded)."""
    g = torch.Generator().manual_seed(seed)
    slots = op.enc_t.shape[1]
    fill_rows(op, slots, g)
    op.edit_a.zero_()
    op.edit_b.fill_(0.01)
    op.set_active(True)
    d = op.enc_t.shape[0]
    hidden = torch.randn(tokens, d, generator=g).to(device, dtype)
    residual = torch.randn(tokens, d, generator=g).to(device, dtype)

    def run():
        with torch.no_grad():
            return op(hidden, residual)
    return run


def op_vs_layer(shape: dict, tokens_list, slots_list, dtype, device, repeats: int, progress=None) -> list[dict]:
    """Per token count: one decoder layer of ``shape``, and the op at each slot count, each run as
    ``Replay`` runs it (captured on CUDA), median of ``repeats``; the op's cost relative to the layer."""
    rows = []
    for tokens in tokens_list:
        layer, run_layer = decoder_layer(shape, tokens, dtype, device)
        replay = Replay(run_layer, device, required=False)
        layer_s = median_seconds(replay.run, device, repeats)
        del layer, run_layer
        rows.append({"tokens": tokens, "variant": "decoder layer", "slots": None, "ms": layer_s * 1e3, "vs_layer": 1.0,
                     "captured": replay.captured, "capture_error": replay.error})
        for slots in slots_list:
            op = make_op(shape["hidden_size"], slots, tokens, dtype, device)
            replay = Replay(op_timing_closure(op, tokens, dtype, device), device, required=False)
            op_s = median_seconds(replay.run, device, repeats)
            rows.append({"tokens": tokens, "variant": "op, every row steered", "slots": slots, "ms": op_s * 1e3,
                         "vs_layer": op_s / layer_s, "captured": replay.captured, "capture_error": replay.error})
            if progress is not None:
                progress.update(1)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| tokens | variant | slots | ms | vs one decoder layer |", "|---|---|---|---|---|"]
    for r in rows:
        slots = "" if r["slots"] is None else r["slots"]
        eager = " (eager: capture failed)" if r.get("capture_error") else ""
        lines.append(f"| {r['tokens']} | {r['variant']}{eager} | {slots} | {r['ms']:.3f} | {r['vs_layer']:.2%} |")
    errors = sorted({r["capture_error"] for r in rows if r.get("capture_error")})
    return "\n".join(lines + [f"capture failed: {e}" for e in errors])
