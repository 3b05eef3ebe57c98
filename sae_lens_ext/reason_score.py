"""ReasonScore's host adapters and the scoring run: SAE loading and decoder-norm folding, activation
capture from a TransformerLens model (HookedTransformer / TransformerBridge) or a plain HF model,
token batches from tensors or datasets, the single-pass run with checkpoints and shards, and the
output files. The metric itself lives in ``reason_score_math`` (host-free, pure torch).

One pass: each token batch runs through the model once (stopping at the hook layer), the SAE
encodes all features (optionally in feature chunks), and float64 sums/counts accumulate; the
reference instead re-ran the model for every 48-feature block. Heavy imports happen inside
functions so registering this module as a plugin stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from reason_plugins.hookspecs import hookimpl
from reason_plugins.saes import load_sae  # noqa: F401  (part of this module's API)

RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(post|pre)")
CHUNKABLE = ("standard", "jumprelu", "gated", "topk")  # encoders we can evaluate on a feature slice
SPECIAL_IGNORES = ("bos", "eos", "pad")


# ---------------------------------------------------------------- SAE
class FeatureEncoder:
    """Encodes with decoder norms folded in (on a copy: the caller's SAE is untouched), either all
    features at once (SAELens's own ``encode``) or in feature chunks to bound memory."""

    def __init__(self, sae, chunk_size: int | None = None):
        import torch

        self.sae = copy.deepcopy(sae).eval()
        self.post_scale = None
        try:
            self.sae.fold_W_dec_norm()
        except NotImplementedError:
            # TopK without rescale_acts_by_decoder_norm: folding would change which k features win,
            # so keep the SAE's selection and scale the activations by the decoder norms instead.
            self.post_scale = self.sae.W_dec.detach().norm(dim=-1).clamp(min=1e-8)
        self.d_sae = int(self.sae.cfg.d_sae)
        self.arch = self.sae.cfg.architecture()
        self.chunk = int(chunk_size) if chunk_size and int(chunk_size) < self.d_sae else None
        if self.chunk and self.arch not in CHUNKABLE:
            self.chunk = None  # unknown encoder: full encode (exact), no memory saving
        self.rescale = None
        if self.arch == "topk" and getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            self.rescale = self.sae.W_dec.detach().norm(dim=-1)
        self._torch = torch

    def _pre(self, sae_in, s: int, e: int, bias: str = "b_enc"):
        pre = sae_in @ self.sae.W_enc[:, s:e] + getattr(self.sae, bias)[s:e]
        return pre * self.rescale[s:e] if self.rescale is not None else pre

    def chunks(self, x):
        """Yield ``(start, acts [N, f])`` covering all features for activations ``x`` [N, d_in]."""
        torch, sae = self._torch, self.sae
        with torch.no_grad():
            if self.chunk is None:
                acts = sae.encode(x)
                yield 0, acts * self.post_scale if self.post_scale is not None else acts
                return
            sae_in = sae.process_sae_in(x)
            bounds = [(s, min(s + self.chunk, self.d_sae)) for s in range(0, self.d_sae, self.chunk)]
            kth = None
            if self.arch == "topk":  # pass 1: each token's k-th largest pre-activation over all chunks
                best = None
                for s, e in bounds:
                    pool = self._pre(sae_in, s, e) if best is None else torch.cat([best, self._pre(sae_in, s, e)], 1)
                    best = pool.topk(min(sae.cfg.k, pool.shape[1]), dim=1).values
                kth = best[:, -1:]
            for s, e in bounds:
                if self.arch == "gated":
                    gate = self._pre(sae_in, s, e, "b_gate") > 0
                    mag = sae_in @ (sae.W_enc[:, s:e] * sae.r_mag[s:e].exp()) + sae.b_mag[s:e]
                    acts = sae.activation_fn(mag) * gate
                elif self.arch == "topk":
                    pre = self._pre(sae_in, s, e)
                    acts = torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
                else:
                    pre = self._pre(sae_in, s, e)
                    acts = sae.activation_fn(pre)
                    if self.arch == "jumprelu":
                        acts = acts * (pre > sae.threshold[s:e])
                yield s, acts * self.post_scale[s:e] if self.post_scale is not None else acts


# ---------------------------------------------------------------- models
class _StopForward(Exception):
    """Raised by our capture hook: a plain HF model has no stop_at_layer, so we cut the forward here."""


def _decoder_layers(model):
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


class ActivationSource:
    """Residual-stream (or any TL hook) activations of a model for token batches, run once per
    batch and stopped right after the hook layer."""

    def __init__(self, model, hook: str):
        self.model, self.hook = model, hook
        layer = re.match(r"blocks\.(\d+)\.", hook)
        if hasattr(model, "hook_dict") and hasattr(model, "run_with_hooks"):  # HookedTransformer / Bridge
            if hook not in model.hook_dict:
                raise ValueError(f"hook {hook!r} not found in the model (e.g. 'blocks.0.hook_resid_post')")
            self.kind, self.d_model, n_layers = "tl", int(model.cfg.d_model), int(model.cfg.n_layers)
            self.vocab = int(model.cfg.d_vocab)
            self.stop = int(layer.group(1)) + 1 if layer and int(layer.group(1)) + 1 < n_layers else None
            return
        self.kind, self.d_model, self.vocab = "hf", int(model.config.hidden_size), int(model.config.vocab_size)
        m = RESID_HOOK.fullmatch(hook)
        if not m:
            raise ValueError(f"hook {hook!r} is not supported on a plain HF model: use 'blocks.L.hook_resid_post' "
                             f"or 'blocks.L.hook_resid_pre', or load the model through TransformerLens")
        layers = _decoder_layers(model)
        if int(m.group(1)) >= len(layers):
            raise ValueError(f"hook {hook!r} not found: the model has {len(layers)} layers (0..{len(layers) - 1})")
        self.layer, self.pre = layers[int(m.group(1))], m.group(2) == "pre"

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(self, tokens):
        import torch

        got = {}
        if tokens.numel() and (int(tokens.max()) >= self.vocab or int(tokens.min()) < 0):
            raise ValueError(f"token id {int(tokens.max())} is outside the model's vocabulary (0..{self.vocab - 1})")
        tokens = tokens.to(self.device)
        with torch.no_grad():
            if self.kind == "tl":
                def keep(act, hook):
                    got["x"] = act
                self.model.run_with_hooks(tokens, fwd_hooks=[(self.hook, keep)], return_type=None, stop_at_layer=self.stop)
                return got["x"]

            def keep_in(module, args, kwargs):
                got["x"] = args[0] if args else kwargs["hidden_states"]
                raise _StopForward

            def keep_out(module, args, output):  # decoder layer output = resid after the layer
                got["x"] = output[0] if isinstance(output, tuple) else output
                raise _StopForward

            handle = (self.layer.register_forward_pre_hook(keep_in, with_kwargs=True) if self.pre
                      else self.layer.register_forward_hook(keep_out))
            try:
                self.model(input_ids=tokens, use_cache=False)
            except _StopForward:
                pass
            finally:
                handle.remove()
        return got["x"]


def load_model(model, hook: str | None = None, backend: str = "auto", device: str = "cpu"):
    """A model from an instance (returned as is) or an HF name / local dir: plain HF for residual
    hooks (fastest), else TransformerLens's TransformerBridge ('hf' | 'bridge' | 'hooked' force one)."""
    if not isinstance(model, (str, Path)):
        return model
    from reason_plugins.models import resolve_model

    model = resolve_model(model)
    if backend == "auto":
        backend = "hf" if hook is None or RESID_HOOK.fullmatch(hook) else "bridge"
    if backend == "hf":
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).to(device).eval()
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(str(model), device=device)
    if backend == "hooked":
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained_no_processing(str(model), device=device)
    raise ValueError(f"unknown model backend {backend!r}; expected auto, hf, bridge or hooked")


def model_tokenizer(model, tokenizer=None):
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(tokenizer))
        return tokenizer
    if getattr(model, "tokenizer", None) is not None:
        return model.tokenizer
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        raise ValueError("cannot find the model's tokenizer: pass tokenizer=")
    return model_tokenizer(model, name)


# ---------------------------------------------------------------- data
def load_data(data, split: str = "train"):
    """A ``datasets.Dataset`` from an instance, a saved dataset dir, a .json/.jsonl/.parquet file or a hub name."""
    import datasets

    if isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        ds = data
    else:
        path = Path(str(data))
        if path.is_dir():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as exc:  # datasets fails obscurely on e.g. an empty saved dataset
                raise ValueError(f"cannot load dataset {str(path)!r} ({type(exc).__name__}: {exc}); is it an empty "
                                 f"or not a saved datasets directory?") from exc
        elif path.suffix in (".json", ".jsonl", ".parquet"):
            if not path.is_file():
                raise FileNotFoundError(f"dataset file {str(path)!r} does not exist")
            if path.stat().st_size == 0:
                raise ValueError(f"dataset file {str(path)!r} is empty (expected rows with a text or tokens column)")
            try:
                ds = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
            except Exception as exc:  # e.g. "generator raised StopIteration" on a file of blank lines
                raise ValueError(f"cannot read dataset file {str(path)!r} ({type(exc).__name__}: {exc})") from exc
        else:
            try:
                ds = datasets.load_dataset(str(data), split=split)
            except Exception as exc:  # offline, misspelt, gated: datasets' own message, on one line
                raise ValueError(f"cannot load dataset {str(data)!r} ({type(exc).__name__}: {exc}); expected a hub "
                                 f"dataset name, a saved dataset dir or a .json/.jsonl/.parquet file") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"dataset {data!r} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return ds


def _token_rows(data, tokenizer, context_size, prepend_bos, seed, text_column):
    """Every token row of the data, in order (documents shuffled by ``seed`` when it is a dataset)."""
    import torch

    if isinstance(data, torch.Tensor) or (isinstance(data, list) and data and isinstance(data[0], (list, tuple))):
        yield from (list(map(int, row)) for row in data)
        return
    ds = load_data(data)
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    for col in ("tokens", "input_ids"):
        if col in ds.column_names:
            for start in range(0, len(ds), 256):
                yield from ds[start:start + 256][col]
            return
    if text_column not in ds.column_names:
        raise ValueError(f"dataset has no {text_column!r} column and no 'tokens' column; columns: {ds.column_names}")
    body = context_size - 1 if prepend_bos else context_size
    eos, buf = tokenizer.eos_token_id, []
    for start in range(0, len(ds), 64):
        for ids in tokenizer(ds[start:start + 64][text_column], add_special_tokens=False)["input_ids"]:
            buf += ids + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])  # docs end with EOS
            while len(buf) >= body:
                yield ([tokenizer.bos_token_id] if prepend_bos else []) + buf[:body]
                buf = buf[body:]


def token_batches(data, tokenizer, *, batch_size=8, context_size=1024, prepend_bos=True, n_samples=None,
                  seed=None, text_column="text", num_chunks=1, chunk_index=0):
    """Batches [B, T] of this shard's rows: row i of the first ``n_samples`` goes to shard i % num_chunks."""
    import torch

    batch = []
    for i, row in enumerate(_token_rows(data, tokenizer, context_size, prepend_bos, seed, text_column)):
        if n_samples is not None and i >= n_samples:
            break
        if i % num_chunks != chunk_index:
            continue
        if batch and len(row) != len(batch[0]):
            raise ValueError(f"token rows must all have one length; got {len(batch[0])} and {len(row)} (row {i})")
        batch.append(row)
        if len(batch) == batch_size:
            yield torch.tensor(batch, dtype=torch.long)
            batch = []
    if batch:
        yield torch.tensor(batch, dtype=torch.long)


def _ignore_ids(ignore_tokens, tokenizer) -> list[int]:
    ids = []
    for t in ignore_tokens or ():
        if isinstance(t, str) and t.lower() in SPECIAL_IGNORES:
            t = getattr(tokenizer, f"{t.lower()}_token_id")
            if t is None:
                continue
        if isinstance(t, str) and t.isdigit():
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(tokenizer):
            raise ValueError(f"ignore token {t!r} is not a token id in 0..{len(tokenizer) - 1} nor one of {SPECIAL_IGNORES}")
        ids.append(t)
    return sorted(set(ids))


# ---------------------------------------------------------------- the run
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
        if value is None and name in ("n_samples", "feature_chunk_size", "context_size"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            bad(name, value, f"an int >= {low}")
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or not 0 <= chunk_index < num_chunks:
        bad("chunk_index", chunk_index, f"an int in 0..{num_chunks - 1} (num_chunks={num_chunks})")


class PreparedRun:
    """Everything loaded and checked for one scoring run, before any batch is read: model, SAE,
    tokenizer, vocabulary, the run config (with the references that reopen it) and its identity."""

    def __init__(self, model, sae, tokens, vocabulary="paper", expand_range=(1, 2), ignore_tokens=None, alpha=0.7, *,
                 eps=1e-12, sae_id=None, hook=None, tokenizer=None, batch_size=8, feature_chunk_size=None,
                 n_samples=None, seed=None, text_column="text", context_size=None, prepend_bos=None,
                 num_chunks=1, chunk_index=0, checkpoint_every=50, backend="auto", sae_loader=None, device="cpu"):
        import torch

        from reason_plugins.vocabulary import resolve_vocabulary
        from sae_lens_ext import reason_score_math as rsm
        from sae_lens_ext import run_identity as ri

        _check_options(alpha, eps, expand_range, batch_size, n_samples, num_chunks, chunk_index, checkpoint_every,
                       feature_chunk_size, context_size)
        model_ref = str(model) if isinstance(model, (str, Path)) else None
        if isinstance(tokens, (str, Path)):  # a path or name: opened (not read) now, so bad data fails before the model loads
            if len(load_data(tokens)) == 0:
                raise ValueError(f"dataset {str(tokens)!r} has no rows (expected rows with a text or tokens column)")
        sae = load_sae(sae, sae_id, device, sae_loader)
        meta = sae.cfg.metadata
        hook = hook or meta.hook_name
        if not hook:
            raise ValueError("the SAE's config names no hook; pass hook=")
        model = load_model(model, hook, backend, device)
        if model_ref is None:  # an instance: its own name, when that is a local dir or a hub name
            name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(getattr(model, "cfg", None), "model_name", None)
            model_ref = str(name) if name else None
        source = ActivationSource(model, hook)
        if int(sae.cfg.d_in) != source.d_model:
            raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the model width d_model={source.d_model} at {hook!r}")
        tok = model_tokenizer(model, tokenizer)
        groups = resolve_vocabulary(vocabulary)
        seqs = rsm.vocabulary_sequences(groups, lambda s: tok.encode(s, add_special_tokens=False), tok.unk_token_id)
        ignore = _ignore_ids(ignore_tokens, tok)
        context_size = int(context_size or meta.context_size or 1024)
        prepend_bos = bool(meta.get("prepend_bos", True) if prepend_bos is None else prepend_bos)
        encoder = FeatureEncoder(sae, feature_chunk_size)
        in_memory_rows = isinstance(tokens, (torch.Tensor, list))
        sae_src = ri.source_of(sae) or {}
        data_id = ri.data_identity(tokens)
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
            "num_chunks": num_chunks, "chunk_index": chunk_index}
        # what the run computes: any difference here means different numbers
        self.identity = {"sae": ri.sae_identity(sae), "model": ri.model_identity(model, model_ref), "data": data_id,
                         **{k: self.config[k] for k in ("hook", "n_samples", "seed", "text_column", "context_size",
                                                        "prepend_bos", "batch_size", "vocabulary", "expand_range",
                                                        "ignore_tokens", "alpha", "eps", "num_chunks")}}
        job = hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.config.update(job=job, fingerprint=f"{job}-{chunk_index}of{num_chunks}", identity=self.identity)
        self.model, self.sae, self.tokens, self.tokenizer, self.source, self.encoder = model, sae, tokens, tok, source, encoder
        self.groups, self.seqs, self.ignore = groups, seqs, ignore
        self.opts = dict(expand_range=expand_range, alpha=alpha, eps=eps, batch_size=batch_size, n_samples=n_samples,
                         seed=seed, text_column=text_column, context_size=context_size, prepend_bos=prepend_bos,
                         num_chunks=num_chunks, chunk_index=chunk_index, checkpoint_every=checkpoint_every)

    def check_against(self, other: dict, what: str, hint: str) -> None:
        """Refuse when ``other`` (a saved run's config / checkpoint extra) was computed by another job."""
        from sae_lens_ext.run_identity import differences

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

        from sae_lens_ext import reason_score_math as rsm

        o, config = self.opts, self.config
        stats = rsm.ReasonStats(list(self.groups), self.encoder.d_sae,
                                extra={k: config[k] for k in ("job", "fingerprint", "num_chunks", "chunk_index", "identity")})
        rows = o["n_samples"] if o["n_samples"] is not None else len(self.tokens) if isinstance(self.tokens, (torch.Tensor, list)) else None
        total = None if rows is None else -(-len(range(o["chunk_index"], rows, o["num_chunks"])) // o["batch_size"])
        if checkpoint is not None and Path(checkpoint).is_file():
            saved = rsm.ReasonStats.load(checkpoint)
            self.check_against(saved.extra, f"checkpoint {str(checkpoint)!r}", "delete it, choose another output, or start over (--overwrite)")
            stats = saved
            print(f"ReasonScore: resuming from batch {stats.n_batches}/{total if total is not None else '?'} "
                  f"({str(checkpoint)!r}, identical run {config['job']})", file=sys.stderr)
        done = stats.n_batches
        group_seqs = list(self.seqs.values())
        batches = token_batches(self.tokens, self.tokenizer, batch_size=o["batch_size"], context_size=o["context_size"],
                                prepend_bos=o["prepend_bos"], n_samples=o["n_samples"], seed=o["seed"],
                                text_column=o["text_column"], num_chunks=o["num_chunks"], chunk_index=o["chunk_index"])
        sae_device = next(self.encoder.sae.parameters()).device
        for i, batch in enumerate(tqdm(batches, total=total, desc="ReasonScore", disable=not progress)):
            if i < done:
                continue  # resumed: these batches are already in the checkpoint
            acts = self.source(batch).to(sae_device)
            masks = rsm.token_masks(batch.to(sae_device), group_seqs, o["expand_range"], self.ignore)
            stats.add_counts(*masks)
            flat = acts.reshape(-1, acts.shape[-1])
            for start, chunk_acts in self.encoder.chunks(flat):
                stats.add_acts(chunk_acts, *masks, start=start)
            if checkpoint is not None and stats.n_batches % o["checkpoint_every"] == 0:
                stats.save(checkpoint)
            if _interrupt_after is not None and stats.n_batches >= _interrupt_after:
                raise KeyboardInterrupt(f"interrupted after {stats.n_batches} batches (test hook)")
        if stats.n_tokens == 0:
            what = config["data"] or type(self.tokens).__name__
            raise ValueError(f"the data {what!r} gave no token rows (empty dataset, or too short for context_size {o['context_size']})")
        if require_matches and stats.count_pos == 0:
            raise ValueError(f"no vocabulary string occurs in the {stats.n_tokens} scored tokens (groups: {list(self.groups)}); "
                             f"check the vocabulary and the tokenizer")
        return rsm.ReasonScoreResult.from_stats(stats, o["alpha"], o["eps"], config)


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
    ``checkpoint_every, backend, sae_loader, device``. ``checkpoint``: a file the accumulators are
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


# ---------------------------------------------------------------- outputs
def write_outputs(result, out_dir, top_k: int = 20) -> dict[str, Path]:
    """scores.safetensors, stats.safetensors (mergeable sums), top_features.json, the histogram and
    the run config, each written atomically."""
    import torch
    from safetensors.torch import save

    from reason_plugins.files import write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    s = result.stats
    tensors = {"scores": result.scores, "entropy": result.entropy, "mu_pos": result.mu_pos, "mu_neg": result.mu_neg,
               "mu_groups": result.mu_groups, "count_groups": s.count_groups,
               "counts": torch.tensor([s.count_pos, s.count_neg, s.n_tokens], dtype=torch.int64)}
    paths = {"scores": write_bytes_atomic(out / "scores.safetensors", save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"groups": json.dumps(s.groups), "counts": "positive,negative,tokens"}))}
    paths["stats"] = s.save(out / "stats.safetensors")
    paths["top_features"] = write_json_atomic(out / "top_features.json", result.top(top_k))
    paths["histogram"] = write_bytes_atomic(out / "score_histogram.png", histogram_png(result, top_k))
    paths["config"] = write_json_atomic(out / "run_config.json", {**result.config, "alpha": result.alpha, "top_k": top_k,
                                                                  "counts": result.counts()})
    return paths


def histogram_png(result, top_k: int = 20) -> bytes:
    from reason_plugins.figures import figure_png, pyplot

    fig, ax = pyplot().subplots(figsize=(7, 4))
    ax.hist(result.scores.numpy(), bins=100, color="tab:blue", log=True)
    for i, row in enumerate(result.top(top_k)):
        ax.axvline(row["score"], color="tab:red", lw=0.8, alpha=0.7, label=f"top {top_k}" if i == 0 else None)
    ax.set(xlabel="ReasonScore", ylabel="features (log)", title=f"ReasonScore of {result.d_sae} SAE features")
    if top_k:
        ax.legend()
    return figure_png(fig)


def _check_out(out: Path) -> None:
    """--out must be (or become) a writable directory: checked before anything is loaded."""
    from reason_plugins.cli_args import check_out_dir

    check_out_dir(out, "out_dir")


def save_inputs(prepared: PreparedRun, out: Path) -> None:
    """Make the run reopenable from its directory alone: in-memory token rows / datasets are saved as
    a dataset (``out/data``) and an SAE known by no path is saved with SAELens (``out/sae``); the
    run config then names those."""
    import datasets
    import torch

    config = prepared.config
    tokens = prepared.tokens
    if config["data"] is None:
        if isinstance(tokens, (torch.Tensor, list)):
            ds = datasets.Dataset.from_dict({"tokens": [list(map(int, row)) for row in tokens]})
        elif isinstance(tokens, datasets.DatasetDict):
            ds = tokens["train"]
        else:
            ds = tokens
        tmp = out / ".data.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        ds.save_to_disk(str(tmp))
        _replace_dir(tmp, out / "data")
        config["data"] = str((out / "data").resolve())
    if config["sae"] is None:
        tmp = out / ".sae.tmp"
        prepared.sae.save_model(str(tmp))
        _replace_dir(tmp, out / "sae")
        config.update(sae=str((out / "sae").resolve()), sae_id=None, sae_loader=None)


def _replace_dir(tmp: Path, final: Path) -> None:
    import shutil

    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def score_to_dir(model, sae, data, out_dir, *, top_k: int = 20, overwrite: bool = False, progress: bool = True,
                 require_matches: bool = True, _interrupt_after=None, **kwargs):
    """Run ``compute_reason_score`` checkpointing into ``out_dir`` (rerunning the same run resumes;
    a checkpoint or finished run of a different job there is refused unless ``overwrite``), then
    write the outputs; returns the result. In-memory rows (and an SAE with no path) are saved next to
    the run so ``--scores out_dir`` can reopen it. Bad input raises before anything is written."""
    out = Path(out_dir)
    _check_out(out)
    checkpoint = Path(kwargs.pop("checkpoint", None) or out / "checkpoint.safetensors")
    prepared = PreparedRun(model, sae, data, **kwargs)
    if overwrite:
        checkpoint.unlink(missing_ok=True)
    elif (out / "run_config.json").is_file() and not checkpoint.is_file():
        previous = json.loads((out / "run_config.json").read_text())
        prepared.check_against(previous, f"the finished run in {str(out)!r}", "choose another --out or pass --overwrite")
    result = prepared.run(checkpoint, progress, require_matches, _interrupt_after)
    save_inputs(prepared, out)
    result.config = dict(prepared.config)
    write_outputs(result, out, top_k)
    checkpoint.unlink(missing_ok=True)  # finished: a rerun starts afresh
    return result


def merge_shards(shard_dirs, out_dir=None, *, top_k: int = 20, alpha: float | None = None):
    """Add the statistics of shard runs (``num_chunks``/``chunk_index``) of one job and score them."""
    from sae_lens_ext import reason_score_math as rsm

    if not shard_dirs:
        raise ValueError("no shard directories given to merge")
    from sae_lens_ext.run_identity import differences

    stats = [rsm.ReasonStats.load(Path(d) / "stats.safetensors") for d in shard_dirs]
    configs = [json.loads((Path(d) / "run_config.json").read_text()) for d in shard_dirs]
    for d, c in zip(shard_dirs, configs):
        if "identity" not in c:
            raise ValueError(f"shard {str(d)!r} predates run identities (its run_config.json has no 'identity'); rescore it")
    for d, c in zip(shard_dirs[1:], configs[1:]):
        diff = differences(configs[0]["identity"], c["identity"])
        if diff:
            raise ValueError(f"shards {str(shard_dirs[0])!r} and {str(d)!r} come from different runs ({'; '.join(diff)}); "
                             f"only the shard index may differ")
    have, want = sorted(c["chunk_index"] for c in configs), list(range(configs[0]["num_chunks"]))
    if have != want:
        raise ValueError(f"shard chunk indices {have} do not cover 0..{want[-1]} exactly once")
    merged = stats[0]
    for other in stats[1:]:
        merged = merged.merge(other)
    config = {**configs[0], "chunk_index": None, "merged_from": [str(d) for d in shard_dirs]}
    if merged.count_pos == 0:
        raise ValueError(f"no vocabulary string occurs in the {merged.n_tokens} scored tokens of the shards")
    result = rsm.ReasonScoreResult.from_stats(merged, configs[0]["alpha"] if alpha is None else alpha, configs[0]["eps"], config)
    if out_dir is not None:
        write_outputs(result, out_dir, top_k)
    return result
