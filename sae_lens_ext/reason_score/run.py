"""The ReasonScore run: options checked before any work, SAE and model loaded, one pass over the token
rows with float64 accumulators (checkpointed and resumable only by the same run, see ``identity``),
shards, and the ``reason_score`` feature-scorer plugin. The metric itself lives in ``metric``
(host-free, pure torch); activations in ``inputs.activations``, token rows in ``inputs.token_data``, output files and
merges in ``outputs``.

One pass: each token batch runs through the model once (stopping at the hook layer), the SAE
encodes all features (optionally in feature chunks), and float64 sums/counts accumulate; the
reference instead re-ran the model for every 48-feature block. Heavy imports happen inside
functions so registering this module as a plugin stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reason_plugins.cli_args import check_int
from reason_plugins.hookspecs import hookimpl
from reason_plugins.saes import load_sae, source_of
from sae_lens_ext.inputs.activations import (
    ActivationSource,
    FeatureEncoder,
    ignore_ids,
    load_model,
    model_tokenizer,
)
from sae_lens_ext.inputs.generation import check_generate, check_generation_room
from sae_lens_ext.inputs.token_data import load_data, token_batches
from sae_lens_ext.reason_score.generated import SCORED_POSITIONS, generated_rows


def _check_options(alpha, eps, expand_range, batch_size, n_samples, num_chunks, chunk_index, checkpoint_every,
                   feature_chunk_size, context_size) -> None:
    """Numeric options, checked before anything is loaded (names the value and what was expected)."""
    import math

    def bad(name, value, expected):
        raise ValueError(f"{name}={value!r} is invalid (expected {expected})")

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        bad("alpha", alpha, "a finite number > 0")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        bad("eps", eps, "a finite number > 0")
    if len(tuple(expand_range)) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in expand_range):
        bad("expand_range", expand_range, "two non-negative ints (LEFT, RIGHT)")
    for name, value, low in (("batch_size", batch_size, 1), ("n_samples", n_samples, 1), ("num_chunks", num_chunks, 1),
                             ("checkpoint_every", checkpoint_every, 1), ("feature_chunk_size", feature_chunk_size, 1),
                             ("context_size", context_size, 2)):
        check_int(name, value, low, optional=name in ("n_samples", "feature_chunk_size", "context_size"))
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or not 0 <= chunk_index < num_chunks:
        bad("chunk_index", chunk_index, f"an int in 0..{num_chunks - 1} (num_chunks={num_chunks})")


class PreparedRun:
    """Everything loaded and checked for one scoring run, before any batch is read: model, SAE,
    tokenizer, vocabulary, the run config (with the references that reopen it) and its identity."""

    def __init__(self, model, sae, tokens, vocabulary="paper", expand_range=(1, 2), ignore_tokens=None, alpha=0.7, *,
                 eps=1e-12, sae_id=None, hook=None, tokenizer=None, batch_size=8, feature_chunk_size=None,
                 n_samples=None, seed=None, text_column="text", context_size=None, prepend_bos=None,
                 num_chunks=1, chunk_index=0, checkpoint_every=50, backend="auto", sae_loader=None, device="cpu",
                 engine="hf", engine_options=None, generate=None):
        import torch

        from reason_plugins.vocabulary import resolve_vocabulary
        from sae_lens_ext.reason_score import identity as ri

        self.model_arg, self.sae_arg, self.device = model, sae, device  # as given: a Ray run's workers load names themselves
        from sae_lens_ext.reason_score import metric as rsm

        _check_options(alpha, eps, expand_range, batch_size, n_samples, num_chunks, chunk_index, checkpoint_every,
                       feature_chunk_size, context_size)
        engine_factory = _engine_factory(engine, model)  # unknown engine, or a loaded model for an engine: refused now
        generate = check_generate(generate, engine, tokens)
        model_ref = str(model) if isinstance(model, (str, Path)) else None
        if isinstance(tokens, (str, Path)):  # a path or name: opened (not read) now, so bad data fails before the model loads
            if len(load_data(tokens)) == 0:
                raise ValueError(f"dataset {str(tokens)!r} has no rows (expected rows with a text or tokens column)")
        sae = load_sae(sae, sae_id, device, sae_loader)
        meta = sae.cfg.metadata
        hook = hook or meta.hook_name
        if not hook:
            raise ValueError("the SAE's config names no hook; pass hook=")
        if engine_factory is None:
            model = load_model(model, hook, backend, device)
            if model_ref is None:  # an instance: its own name, when that is a local dir or a hub name
                name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(getattr(model, "cfg", None), "model_name", None)
                model_ref = str(name) if name else None
            source = ActivationSource(model, hook)
            d_model = source.d_model
        else:  # the engine loads the model when the run starts; here only its config and tokenizer
            from reason_plugins.models import resolve_model

            model, source = str(resolve_model(model_ref)), None
            d_model = _hidden_size(model)
            if tokenizer is None:
                tokenizer = model
        if int(sae.cfg.d_in) != d_model:
            raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the model width d_model={d_model} at {hook!r}")
        tok = model_tokenizer(model, tokenizer)
        groups = resolve_vocabulary(vocabulary)
        seqs = rsm.vocabulary_sequences(groups, lambda s: tok.encode(s, add_special_tokens=False), tok.unk_token_id)
        ignore = ignore_ids(ignore_tokens, tok)
        context_size = int(context_size or meta.context_size or 1024)
        prepend_bos = bool(meta.get("prepend_bos", True) if prepend_bos is None else prepend_bos)
        encoder = FeatureEncoder(sae, feature_chunk_size)
        in_memory_rows = isinstance(tokens, (torch.Tensor, list)) or generate is not None
        sae_src = source_of(sae) or {}
        if engine_factory is not None and not sae_src.get("sae"):
            raise ValueError(f"engine={engine!r} loads the SAE itself: pass its directory or release (with sae_id), not an SAE object")
        data_id = ri.data_identity(tokens if generate is None else list(generate["prompts"]))
        self.config = {
            # how to reopen the run (paths or names; None when the caller passed an object we cannot name)
            "model": model_ref, "model_class": type(model).__name__, "backend": backend,
            "sae": sae_src.get("sae"), "sae_id": sae_id if sae_id is not None else sae_src.get("sae_id"),
            "sae_loader": sae_loader or sae_src.get("loader"), "sae_class": type(sae).__name__,
            "data": data_id["ref"], "hook": hook, "architecture": encoder.arch, "d_sae": encoder.d_sae,
            "n_samples": n_samples, "seed": None if in_memory_rows else seed, "text_column": text_column,
            "context_size": context_size, "prepend_bos": prepend_bos, "batch_size": batch_size,
            "vocabulary": {g: [list(s) for s in v] for g, v in seqs.items()},
            "expand_range": [int(v) for v in expand_range], "ignore_tokens": ignore, "alpha": alpha, "eps": eps,
            "num_chunks": num_chunks, "chunk_index": chunk_index, "engine": engine}
        # what the run computes: any difference here means different numbers
        self.identity = {"sae": ri.sae_identity(sae), "model": ri.model_identity(model, model_ref), "data": data_id,
                         **{k: self.config[k] for k in ("hook", "n_samples", "seed", "text_column", "context_size",
                                                        "prepend_bos", "batch_size", "vocabulary", "expand_range",
                                                        "ignore_tokens", "alpha", "eps", "num_chunks")}}
        if engine_factory is not None:  # other arithmetic, other numbers (the HF path's identity stays as it was)
            self.identity["engine"] = {"name": engine, "dtype": (engine_options or {}).get("dtype", "float32")}
            engine_options = _cut_engine(engine_options, hook, generate)
            self.config["engine_cut_after"] = engine_options.get("cut_at")  # where the engine stopped: a record, not identity
        if generate is not None:  # the rows are the model's own continuations of these prompts, sampled so
            self.identity["generate"] = {**{k: v for k, v in generate.items() if k != "prompts"}, "scored": SCORED_POSITIONS}
            check_generation_room(generate, tok, model, engine_options)  # before any engine starts
        job = hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.config.update(job=job, fingerprint=f"{job}-{chunk_index}of{num_chunks}", identity=self.identity)
        self.model, self.sae, self.tokens, self.tokenizer, self.source, self.encoder = model, sae, tokens, tok, source, encoder
        self.groups, self.seqs, self.ignore = groups, seqs, ignore
        self.engine_factory, self.engine_options, self.generate = engine_factory, dict(engine_options or {}), generate
        self.transcripts: list[dict] | None = None
        self.engine_scale = _fold_scale(sae, encoder.arch) if engine_factory is not None else None
        self.opts = dict(expand_range=expand_range, alpha=alpha, eps=eps, batch_size=batch_size, n_samples=n_samples,
                         seed=seed, text_column=text_column, context_size=context_size, prepend_bos=prepend_bos,
                         num_chunks=num_chunks, chunk_index=chunk_index, checkpoint_every=checkpoint_every)

    def check_against(self, other: dict, what: str, hint: str) -> None:
        """Refuse when ``other`` (a saved run's config / checkpoint extra) was computed by another job."""
        from sae_lens_ext.reason_score.identity import differences

        theirs = other.get("identity")
        if other.get("fingerprint") == self.config["fingerprint"] and theirs is not None:
            return
        if theirs is None:
            diff = ["it predates run identities (no record of what it computed)"]
        else:
            diff = differences(theirs, self.identity)
            if other.get("chunk_index") != self.config["chunk_index"]:
                diff.append(f"chunk_index: {other.get('chunk_index')} != {self.config['chunk_index']}")
        raise ValueError(f"{what} belongs to a different run ({'; '.join(diff) or 'fingerprint differs'}); {hint}")

    def run(self, checkpoint=None, progress=True, require_matches=True, _interrupt_after=None):
        import sys

        import torch
        from tqdm.auto import tqdm

        from sae_lens_ext.reason_score import metric as rsm

        o, config = self.opts, self.config
        stats = rsm.ReasonStats(list(self.groups), self.encoder.d_sae,
                                extra={k: config[k] for k in ("job", "fingerprint", "num_chunks", "chunk_index", "identity")})
        session = None
        if self.generate is not None:  # the model writes the rows first (kept beside the checkpoint for a resume)
            session = self._transcribe(checkpoint)
        rows = o["n_samples"] if o["n_samples"] is not None else None
        if isinstance(self.tokens, (torch.Tensor, list)) or self.generate is not None:  # rows known: the bar counts real ones
            rows = len(self.tokens) if rows is None else min(rows, len(self.tokens))
        shard_rows = None if rows is None else len(range(o["chunk_index"], rows, o["num_chunks"]))  # the rows this process scores
        total = None if rows is None else -(-shard_rows // o["batch_size"])
        if checkpoint is not None and Path(checkpoint).is_file():
            saved = rsm.ReasonStats.load(checkpoint)
            self.check_against(saved.extra, f"checkpoint {str(checkpoint)!r}", "delete it, choose another output, or start over (--overwrite)")
            stats = saved
            print(f"ReasonScore: resuming from batch {stats.n_batches}/{total if total is not None else '?'} "
                  f"({str(checkpoint)!r}, identical run {config['job']})", file=sys.stderr)
        done = done_batches(stats)
        group_seqs = list(self.seqs.values())
        batches = token_batches(self.tokens, self.tokenizer, batch_size=o["batch_size"], context_size=o["context_size"],
                                prepend_bos=o["prepend_bos"], n_samples=o["n_samples"], seed=o["seed"],
                                text_column=o["text_column"], num_chunks=o["num_chunks"], chunk_index=o["chunk_index"],
                                with_scored=True)
        sae_device = next(self.encoder.sae.parameters()).device
        bar = tqdm(total=shard_rows, desc="ReasonScore", unit="row", disable=not progress)  # real rows, not a guess
        try:
            for i, (batch, scored) in enumerate(batches):
                if i in done:
                    bar.update(batch.shape[0])
                    continue  # resumed: these batches are already in the checkpoint
                if self.engine_factory is None:
                    add_hf_batch(stats, self.source, self.encoder, batch, group_seqs, o["expand_range"], self.ignore, sae_device,
                                 scored=scored)
                else:
                    if session is None:  # started once there is work for it (a finished resume starts none)
                        session = self._session()
                    masks = rsm.token_masks(batch, group_seqs, o["expand_range"], self.ignore, scored)
                    stats.add_counts(*masks)
                    self._add_engine_sums(stats, session, batch, masks, scored)
                bar.update(batch.shape[0])
                if DONE_KEY in stats.extra:  # a checkpoint a Ray run wrote: its batches need not be a prefix
                    stats.extra[DONE_KEY] = batch_ranges(done_batches(stats) | {i})
                if checkpoint is not None and stats.n_batches % o["checkpoint_every"] == 0:
                    stats.save(checkpoint)
                if _interrupt_after is not None and stats.n_batches >= _interrupt_after:
                    raise KeyboardInterrupt(f"interrupted after {stats.n_batches} batches (test hook)")
        finally:
            bar.close()
            if session is not None:
                session.close()
        if stats.n_tokens == 0:
            what = config["data"] or type(self.tokens).__name__
            raise ValueError(f"the data {what!r} gave no token rows (empty dataset, or too short for context_size {o['context_size']})")
        if require_matches and stats.count_pos == 0:
            raise ValueError(f"no vocabulary string occurs in the {stats.n_tokens} scored tokens (groups: {list(self.groups)}); "
                             f"check the vocabulary and the tokenizer")
        return rsm.ReasonScoreResult.from_stats(stats, o["alpha"], o["eps"], config)


    def _session(self):
        return self.engine_factory(self.model, self.config["sae"], self.config["sae_id"], self.config["hook"], **self.engine_options)

    def _transcribe(self, checkpoint):
        """The model's own continuations of the prompts, as this run's text rows (``self.tokens``); read back
        from ``transcripts.jsonl`` beside the checkpoint when an identical run wrote them. Returns the
        engine session it started, if it had to."""
        import datasets

        from reason_plugins.files import write_text_atomic

        path = Path(checkpoint).with_name("transcripts.jsonl") if checkpoint is not None else None
        saved = [json.loads(line) for line in path.read_text().splitlines()] if path is not None and path.is_file() else None
        session = None
        if not saved or saved[0].get("job") != self.config["job"]:
            session = self._session()
            g = self.generate
            out = session.generate(g["prompts"], n=g["n"], max_tokens=g["max_tokens"], temperature=g["temperature"],
                                   seed=g["seed"], chat_template=g["chat_template"])
            saved = [{"job": self.config["job"], "prompt_index": i, "choice": c, "prompt": g["prompts"][i], "text": row["text"],
                      "prompt_token_ids": row["prompt_token_ids"], "token_ids": row["token_ids"]}
                     for i, choices in enumerate(out) for c, row in enumerate(choices)]
            if path is not None:
                write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in saved))
        self.transcripts = saved
        self.tokens = datasets.Dataset.from_dict(generated_rows(saved, self.tokenizer))
        return session

    def _add_engine_sums(self, stats, session, batch, masks, scored=None) -> None:
        """One batch through the activation engine: per position a bitmask (positive, negative, then one
        bit per group), summed in the engine over every feature; folded like the HF path's activations.
        Rows with a ``scored`` mask are sent up to their last scored position (causal attention: what
        follows it, the right padding, changes nothing before it)."""
        import torch

        groups, positive, negative = masks
        bits = positive.long() | negative.long() << 1
        for g in range(groups.shape[0]):
            bits |= groups[g].long() << (2 + g)
        rows, row_bits = batch.tolist(), bits.tolist()
        if scored is not None:
            ends = [int(s.nonzero().max()) + 1 if s.any() else 1 for s in scored]
            rows, row_bits = [r[:e] for r, e in zip(rows, ends)], [b[:e] for b, e in zip(row_bits, ends)]
        sums, counts = session.feature_sums(rows, row_bits, 2 + groups.shape[0])
        expected = [int(positive.sum()), int(negative.sum()), *(int(c) for c in groups.flatten(1).sum(1))]
        if [int(round(c)) for c in counts] != expected:
            raise RuntimeError(f"the activation engine summed {[int(round(c)) for c in counts]} tokens per set, expected "
                               f"{expected}: some positions were not computed")
        sums = torch.from_numpy(sums).to(torch.float64) * self.engine_scale
        stats.sum_pos += sums[0]
        stats.sum_neg += sums[1]
        stats.sum_groups += sums[2:]


DONE_KEY = "done_batches"  # in a checkpoint's extra: the batch indices its sums hold, as [start, stop) ranges


def done_batches(stats) -> set[int]:
    """The batch indices a checkpoint's sums hold: its ``done_batches`` ranges (written by Ray runs, whose
    workers finish batches out of order), else the first ``n_batches`` (the one-process run's order)."""
    ranges = stats.extra.get(DONE_KEY)
    if ranges is None:
        return set(range(stats.n_batches))
    return {i for start, stop in ranges for i in range(start, stop)}


def batch_ranges(indices) -> list[list[int]]:
    """Sorted batch indices as [start, stop) ranges (compact in a checkpoint's metadata)."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def add_hf_batch(stats, source, encoder, batch, group_seqs, expand_range, ignore, sae_device, scored=None) -> None:
    """One token batch [B, T] through the model (forward hook) and the SAE, into ``stats``: what the
    one-process run and every Ray worker do per batch, so both add the same numbers. ``scored`` [B, T]:
    the positions that count (a generated run's rows: not the prompt, not the right padding)."""
    from sae_lens_ext.reason_score import metric as rsm

    acts = source(batch).to(sae_device)
    masks = rsm.token_masks(batch.to(sae_device), group_seqs, expand_range, ignore,
                            None if scored is None else scored.to(sae_device))
    stats.add_counts(*masks)
    flat = acts.reshape(-1, acts.shape[-1])
    for start, chunk_acts in encoder.chunks(flat):
        stats.add_acts(chunk_acts, *masks, start=start)


def _engine_factory(engine: str, model):
    """The registered activation engine (None for the built-in HF path), refused before any loading."""
    if engine in (None, "hf"):
        return None
    from reason_plugins.manager import get

    factory = get("activation_engine", engine)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"engine={engine!r} runs the model itself: pass its name or local directory, not a loaded model")
    return factory


def _cut_engine(engine_options, hook: str, generate) -> dict:
    """The engine options with ``cut_at``: over given rows only the prefill up to the hook's layer L is read,
    so the engine loads and runs layers 0..L (``vllm_patches.cut_model``) unless ``"cut": False`` (CLI:
    ``--full-engine``). Generations need every layer, so ``generate`` runs are never cut.

    The cut is not part of the run's identity: the rows at ``blocks.L.hook_resid_post`` do not depend on
    any later layer, so a cut and a full engine compute the same sums (tested: equal scores and raw rows),
    and a checkpoint or shard of either resumes or merges with the other."""
    from reason_plugins.spec_base import hook_layer

    options = dict(engine_options or {})
    cut = options.pop("cut", True)
    layer = hook_layer(hook)
    if cut and generate is None and layer is not None and "cut_at" not in options:
        options["cut_at"] = layer
    return options


def _hidden_size(model_dir: str) -> int:
    from reason_plugins.models import load_config

    cfg = load_config(model_dir)
    return int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)


def _fold_scale(sae, arch: str):
    """Per feature, what the HF path's activations (``FeatureEncoder``: decoder norms folded in) are
    SAELens's own ``encode`` times: the decoder norms, or 1 for a TopK SAE that already rescales by them."""
    import torch

    norms = sae.W_dec.detach().norm(dim=-1).double().cpu()
    if arch == "topk" and getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return torch.ones_like(norms)
    return norms


def compute_reason_score(model, sae, tokens, vocabulary="paper", expand_range=(1, 2), ignore_tokens=None, alpha=0.7, *,
                         checkpoint=None, progress=True, require_matches=True, _interrupt_after=None, **kwargs):
    """ReasonScore of every feature of ``sae`` on ``tokens`` in one pass over the data.

    ``model``: HookedTransformer, TransformerBridge, HF causal LM, or an HF name / local dir.
    ``sae``: SAELens SAE, local dir, release (with ``sae_id``) or what a ``sae_loader`` plugin reads.
    ``tokens``: [N, T] tensor / list of rows, a ``datasets.Dataset``, or a dataset path/name (text
    column tokenised and concatenated to the SAE's context_size, or a pre-tokenised ``tokens``
    column). ``ignore_tokens``: ids or "bos"/"eos"/"pad". Keyword options (``PreparedRun``):
    ``eps, sae_id, hook, tokenizer, batch_size, feature_chunk_size`` (encode that many features at a
    time: bounds memory, same result), ``n_samples, seed, text_column, context_size, prepend_bos,
    num_chunks, chunk_index`` (score one shard of the rows; merge with ``merge_shards``),
    ``checkpoint_every, backend, sae_loader, device``, ``engine`` ("hf": the model runs here with a
    forward hook; "vllm" or any registered ``activation_engine``: the engine runs the model and sums the
    features where it computes them, ``engine_options`` passed to it, e.g. ``tensor_parallel_size``; over
    given rows the engine loads layers 0..L of the hook's layer L only, ``"cut": False`` loads every layer:
    same scores, same identity).
    ``checkpoint``: a file the accumulators are
    saved to every ``checkpoint_every`` batches and resumed from — only by the same run (identity:
    SAE weights, model, data fingerprint, vocabulary, options); another run's checkpoint is refused.
    Returns a ``ReasonScoreResult`` (``.scores``, ``.mu_pos``, ``.mu_neg``, ``.mu_groups``, ``.top(k)``).

    Every option is checked before the model or SAE is loaded. Vocabulary errors: strings that
    tokenize to the unknown token cannot match and are dropped; if none is left, or (with
    ``require_matches``, off for shards) if no string occurs anywhere in the scored tokens, a
    ValueError names the groups. Groups that never occur are kept (mu_g = 0), as in the reference,
    so G is the vocabulary's group count.
    """
    prepared = PreparedRun(model, sae, tokens, vocabulary, expand_range, ignore_tokens, alpha, **kwargs)
    return prepared.run(checkpoint, progress, require_matches, _interrupt_after)


@hookimpl
def reason_feature_scorers():
    return {"reason_score": compute_reason_score}
