"""Harvest: the residual rows of token rows at several hooks, in one pass, into SAELens's
cached-activations format (``activation_cache``), for SAELens's own runner to train SAEs from.

Rows come from the one packing rule (``inputs.token_data.token_batches``, as ``score`` packs them).
The model runs in one of two places:

- ``engine="hf"``: here, a plain HF forward with hooks on the decoder layers, stopped after the
  deepest one (``hf_rows``), the reference the engine is held to;
- ``engine="vllm"`` (any registered ``activation_engine`` whose sessions have ``raw_rows``): the
  inference engine computes the rows and hands them out through a raw readout.

With ``generate=`` the rows are the model's own continuations of prompts instead, generated and read back in
the engine, only the generated positions kept (``harvest_generated``).

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
            steering=None, engine_options: dict | None = None, generate: dict | None = None, session=None) -> dict:
    """Harvest the rows of ``data`` (a dataset, path, or [N, T] token rows) at ``hooks`` of ``model`` into
    ``out`` (one SAELens cache folder per hook); returns ``{"hooks": {hook: folder}, "rows", "tokens",
    "resumed_rows", "seconds", "tokens_per_s"}``. A run stopped part-way resumes from its last shard.

    ``generate={"prompts", "n", "max_tokens", "temperature", "seed", "chat_template"}`` (``data=None``, an engine):
    the model's own continuations instead, generated and read back under ``steering``, the generated positions
    packed ``context_size`` per row (``harvest_generated``); the result adds ``generated_tokens``,
    ``dropped_tokens``, ``continuations`` and ``transcripts``. ``session``: an open engine session to use (left open)."""
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
    if generate is not None:
        from sae_lens_ext.inputs.generation import check_generate
        from sae_lens_ext.training.harvest_generated import check_steering

        if data is not None:
            raise ValueError("generate= harvests the model's own continuations: give prompts, not data too")
        generate = check_generate(generate, engine, None)
        check_steering(steering)
    path = resolve_model(str(model))
    cfg = load_config(path)
    hooks = parse_hooks(hooks, int(cfg.num_hidden_layers))
    tok = model_tokenizer(None, tokenizer or path)
    if generate is not None:
        return _harvest_generated(path, hooks, out, tok, int(cfg.hidden_size), generate, factory, engine_options or {}, steering,
                                  context_size=context_size, dtype=dtype, rows_per_shard=rows_per_shard, batch_size=batch_size,
                                  progress=progress, session=session, model_ref=model)

    def batches():
        return token_batches(data, tok, batch_size=batch_size, context_size=context_size, prepend_bos=prepend_bos,
                             n_samples=n_rows, seed=seed, text_column=text_column)

    fingerprint, total = rows_fingerprint(batches())
    if not total:
        raise ValueError(f"the data gives no token row of context_size {context_size}")
    width = len(next(iter(batches()))[0])
    writer = CacheWriter(out, _identity(model, fingerprint, total, prepend_bos=prepend_bos, steering=_steering_id(steering), sampling=None),
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
    run, close = _source(path, hooks, dtype, factory, options, steering, session)
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


def _steering_id(steering) -> str | None:
    return None if steering is None else hashlib.sha256(repr(steering).encode()).hexdigest()[:16]


def _open_session(path, hooks, dtype, factory, options, *, cut: bool):
    """An engine session reading raw rows at ``hooks`` (cut after the deepest hook's layer when ``cut``)."""
    options = dict(options)
    if options.pop("cut", True) and cut:  # the engine loads and runs layers 0..L only: the rows up to L are the same
        options["cut_at"] = deepest_layer(hooks)
    session = factory(str(path), None, None, None, raw_hooks=hooks, dtype=dtype, **options)
    if not hasattr(session, "raw_rows"):
        session.close()
        raise ValueError("this activation engine cannot hand out raw rows (its sessions have no raw_rows)")
    return session


def _source(path, hooks, dtype, factory, options, steering, session=None):
    """``(tokens [B, T] -> {hook: [B, T, d]}, close)`` for the chosen engine."""
    import torch

    if factory is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
        return hf_rows(model, hooks), lambda: None
    own = session is None
    session = _open_session(path, hooks, dtype, factory, options, cut=True) if own else session

    def run(tokens):
        got = session.raw_rows(tokens.tolist(), hooks, steering=steering)
        return {h: torch.stack([torch.as_tensor(r) for r in got[h]]) for h in hooks}

    return run, session.close if own else (lambda: None)


def _unchunked(options: dict, longest: int | None) -> dict:
    """Engine options under which no prefill is split on a CPU engine: vLLM 0.32's CPU runner cannot rewind a seeded
    sampler over a partial prefill ("CPU Generator does not use offset"), so the step budget holds every running row
    whole (the context is the longest row, at most ``max_num_seqs`` rows, 16 unless told)."""
    import torch

    if torch.cuda.is_available() or longest is None or "max_num_batched_tokens" in options:
        return options
    seqs = int(options.get("max_num_seqs", 16))
    length = int(options.get("max_model_len", longest))
    return {**options, "max_num_seqs": seqs, "max_model_len": length, "max_num_batched_tokens": seqs * length}


def _harvest_generated(path, hooks, out, tok, d_in, generate, factory, options, steering, *, context_size, dtype, rows_per_shard,
                       batch_size, progress, session, model_ref) -> dict:
    """``harvest(generate=...)``: every check done before the folder or the engine is touched, then generate (or
    reuse this job's transcripts), read the rows back and write the generated positions."""
    import json
    import time

    from tqdm.auto import tqdm

    from sae_lens_ext.inputs.generation import check_generation_room
    from sae_lens_ext.training import harvest_generated as hg

    longest = check_generation_room(generate, tok, str(path), options)  # a prompt that cannot fit: refused before anything is written
    prompts_id = hashlib.sha256(json.dumps(generate["prompts"]).encode()).hexdigest()[:16]
    sampling = {k: generate[k] for k in ("n", "max_tokens", "temperature", "seed", "chat_template")}
    identity = dict(_identity(model_ref, prompts_id, None, prepend_bos=False, steering=_steering_id(steering), sampling=sampling),
                    positions="generated")
    writer = CacheWriter(out, identity, hooks, context_size, d_in, dtype, rows_per_shard)
    done = writer.start()
    job = hashlib.sha256(json.dumps(writer.identity, sort_keys=True).encode()).hexdigest()[:16]
    result = {"hooks": {h: Path(out) / h for h in hooks}, "resumed_rows": done, "transcripts": Path(out) / hg.TRANSCRIPTS}
    if writer.complete:
        plan = writer.state["generated"]
        return dict(result, **plan, tokens=plan["rows"] * context_size, seconds=0.0, tokens_per_s=None)
    t0 = time.perf_counter()
    own = session is None
    if own:  # generating needs every layer
        session = _open_session(path, hooks, dtype, factory, _unchunked(options, longest), cut=False)
    try:
        transcripts = hg.transcribe(session, generate, steering, Path(out), job)
        generate_seconds = time.perf_counter() - t0
        plan = hg.packing(transcripts, context_size)
        writer.state["generated"] = plan  # recorded in harvest.json: the tokens that filled rows and the tail dropped
        if not plan["rows"]:
            raise ValueError(f"the model generated {plan['generated_tokens']} tokens, fewer than one row of context_size "
                             f"{context_size}: generate more (--generate, --max-tokens) or lower --context-size (in a new --out)")
        bar = tqdm(total=plan["rows"], initial=done, unit="row", desc="harvest (generated)", disable=not progress)

        def read(rows):
            return session.raw_rows(rows, hooks, steering=steering)

        try:
            for ids, acts in hg.packed_rows(transcripts, read, hooks, context_size, skip_rows=done, batch_size=batch_size):
                writer.add(ids, acts)
                bar.update(len(ids))
            folders = writer.finish()
        finally:
            bar.close()
    finally:
        if own:
            session.close()
    seconds = time.perf_counter() - t0
    fresh = plan["rows"] - done
    return dict(result, **plan, hooks=folders, tokens=plan["rows"] * context_size, seconds=seconds, generate_seconds=generate_seconds,
                tokens_per_s=fresh * context_size / seconds if seconds else None)
