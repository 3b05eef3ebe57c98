"""Harvest: the residual rows of token rows at several hooks, in one pass, into SAELens's
cached-activations format (``activation_cache``), for SAELens's own runner to train SAEs from.

Rows come from the one packing rule (``inputs.token_data.token_batches``, as ``score`` packs them).
The model runs in one of two places:

- ``engine="hf"``: here, a plain HF forward with hooks on the decoder layers, stopped after the
  deepest one (``hf_rows``), the reference the engine is held to;
- ``engine="vllm"`` (any registered ``activation_engine`` whose sessions have ``raw_rows``): the
  inference engine computes the rows and hands them out through a raw readout.

Every option is checked, and the output folder's identity compared, before any model loads.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sae_lens_ext.training.activation_cache import DTYPES, CacheWriter

RESID = re.compile(r"blocks\.(\d+)\.hook_resid_(post|pre)")


def parse_hooks(hooks, n_layers: int) -> list[str]:
    """Hook names (a list or comma-separated text) checked against a model of ``n_layers`` layers."""
    if isinstance(hooks, str):
        hooks = [h.strip() for h in hooks.split(",") if h.strip()]
    hooks = list(dict.fromkeys(hooks or ()))
    if not hooks:
        raise ValueError("give at least one hook, e.g. --hooks blocks.2.hook_resid_post")
    for hook in hooks:
        m = RESID.fullmatch(hook)
        if not m:
            raise ValueError(f"hook {hook!r} is not a residual-stream hook: use blocks.L.hook_resid_post or blocks.L.hook_resid_pre")
        if int(m.group(1)) >= n_layers:
            raise ValueError(f"hook {hook!r} is outside the model: it has {n_layers} layers (blocks.0 .. blocks.{n_layers - 1})")
    return hooks


def deepest_layer(hooks: list[str]) -> int:
    """The last decoder layer a pass must run to compute every hook."""
    return max(int(m.group(1)) - (m.group(2) == "pre") for m in map(RESID.fullmatch, hooks))


def rows_fingerprint(batches) -> tuple[str, int]:
    """sha256 of the token rows in order (the data part of a harvest's identity), and their count."""
    h, n = hashlib.sha256(), 0
    for batch in batches:
        for row in batch.tolist():
            h.update(",".join(map(str, row)).encode() + b"\n")
            n += 1
    return h.hexdigest()[:16], n


class _Stop(Exception):
    pass


def hf_rows(model, hooks: list[str]):
    """A function ``tokens [B, T] -> {hook: [B, T, d]}`` over a plain HF causal LM: forward hooks on its
    decoder layers (``resid_pre`` = the layer's input, ``resid_post`` = its output), the forward stopped
    after the deepest layer needed."""
    import torch

    from sae_lens_ext.inputs.activations import _decoder_layers

    layers = _decoder_layers(model)
    wanted = [(h, int(m.group(1)), m.group(2)) for h, m in ((h, RESID.fullmatch(h)) for h in hooks)]
    last = deepest_layer(hooks)

    def run(tokens):
        got, handles = {}, []

        def post(index):
            def hook(module, args, output):
                for name, layer, kind in wanted:
                    if layer == index and kind == "post":
                        got[name] = output[0] if isinstance(output, tuple) else output
                if index == last:
                    raise _Stop
            return hook

        def pre(index):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                for name, layer, kind in wanted:
                    if layer == index and kind == "pre":
                        got[name] = x
                if index > last:
                    raise _Stop
            return hook

        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post(i)))
        try:
            with torch.no_grad():
                model(input_ids=tokens.to(next(model.parameters()).device), use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {h: got[h] for h in hooks}

    return run


def _identity(model, fingerprint: str, n_rows: int, *, prepend_bos: bool, steering, sampling) -> dict:
    return {"model": str(model), "data": fingerprint, "rows_total": n_rows, "prepend_bos": bool(prepend_bos),
            "sampling": sampling, "steering": steering}


def harvest(model, data, hooks, out, *, engine: str = "hf", context_size: int = 1024, prepend_bos: bool = True,
            n_rows: int | None = None, batch_size: int = 8, dtype: str = "float32", rows_per_shard: int = 256,
            seed: int | None = None, text_column: str = "text", tokenizer=None, progress: bool = True,
            steering=None, engine_options: dict | None = None) -> dict:
    """Harvest the rows of ``data`` (a dataset, path, or [N, T] token rows) at ``hooks`` of ``model`` into
    ``out`` (one SAELens cache folder per hook); returns ``{"hooks": {hook: folder}, "rows", "tokens",
    "resumed_rows", "seconds", "tokens_per_s"}``. A run stopped part-way resumes from its last shard."""
    import time

    from reason_plugins.models import load_config, resolve_model
    from sae_lens_ext.inputs.activations import model_tokenizer
    from sae_lens_ext.inputs.token_data import token_batches

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    factory = None
    if engine != "hf":
        from reason_plugins.manager import get

        factory = get("activation_engine", engine)
    if steering is not None and factory is None:
        raise ValueError("steering during a harvest needs --engine vllm (the engine applies the edit)")
    path = resolve_model(str(model))
    cfg = load_config(path)
    hooks = parse_hooks(hooks, int(cfg.num_hidden_layers))
    tok = model_tokenizer(None, tokenizer or path)

    def batches():
        return token_batches(data, tok, batch_size=batch_size, context_size=context_size, prepend_bos=prepend_bos,
                             n_samples=n_rows, seed=seed, text_column=text_column)

    fingerprint, total = rows_fingerprint(batches())
    if not total:
        raise ValueError(f"the data gives no token row of context_size {context_size}")
    width = len(next(iter(batches()))[0])
    steering_id = None if steering is None else hashlib.sha256(repr(steering).encode()).hexdigest()[:16]
    writer = CacheWriter(out, _identity(model, fingerprint, total, prepend_bos=prepend_bos, steering=steering_id, sampling=None),
                         hooks, width, int(cfg.hidden_size), dtype, rows_per_shard)
    done = writer.start()
    result = {"hooks": {h: Path(out) / h for h in hooks}, "rows": total, "tokens": total * width, "resumed_rows": done}
    if writer.complete:
        return dict(result, seconds=0.0, tokens_per_s=None)
    options = dict(engine_options or {})
    if factory is not None and "readout_memory_mb" not in options:
        # the engine keeps finished readouts until this bound; the harvest fetches each batch's rows once, so a
        # batch and a half is enough, and the memory stays flat in tokens (the default, 256 MB, filled first)
        batch_bytes = batch_size * width * len(hooks) * (int(cfg.hidden_size) * 4 + 16)
        options["readout_memory_mb"] = int(1.5 * batch_bytes) // 2**20 + 1
    run, close = _source(path, hooks, dtype, factory, options, steering)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=done, unit="row", desc="harvest", disable=not progress)
    t0, seen, fresh = time.perf_counter(), 0, 0
    try:
        for batch in batches():
            if seen + len(batch) <= done:
                seen += len(batch)
                continue
            batch = batch[max(0, done - seen):]
            seen = max(seen, done) + len(batch)
            writer.add(batch, run(batch))
            fresh += len(batch)
            bar.update(len(batch))
        folders = writer.finish()
    finally:
        bar.close()
        close()
    seconds = time.perf_counter() - t0
    return dict(result, hooks=folders, seconds=seconds, tokens_per_s=fresh * width / seconds if seconds else None)


def _source(path, hooks, dtype, factory, options, steering):
    """``(tokens [B, T] -> {hook: [B, T, d]}, close)`` for the chosen engine."""
    import torch

    if factory is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
        return hf_rows(model, hooks), lambda: None
    options = dict(options)
    if options.pop("cut", True):  # the engine loads and runs layers 0..L only: the rows up to L are the same
        options["cut_at"] = deepest_layer(hooks)
    session = factory(str(path), None, None, None, raw_hooks=hooks, dtype=dtype, **options)
    if not hasattr(session, "raw_rows"):
        session.close()
        raise ValueError("this activation engine cannot hand out raw rows (its sessions have no raw_rows)")

    def run(tokens):
        got = session.raw_rows(tokens.tolist(), hooks, steering=steering)
        return {h: torch.stack([torch.as_tensor(r) for r in got[h]]) for h in hooks}

    return run, session.close
