"""SAELens's cached-activations format, written by us: what ``reason-sae harvest`` fills and what
SAELens's own ``LanguageModelSAETrainingRunner`` reads back with ``use_cached_activations``.

The format is the one ``sae_lens.CacheActivationsRunner`` writes: per hook, a ``datasets`` folder
(``save_to_disk``; loads with ``datasets.load_from_disk``) with one ``Array2D`` column named by the hook,
``[context_size, d_in]`` in the cache dtype, and ``token_ids`` (``Sequence(int32)`` of ``context_size``),
one row per token row, in the order the rows were given (SAELens's runner also leaves its on-disk
copy unshuffled). Shards are written as SAELens writes them (``.tmp_shards/shard_NNNNN``, one
``Dataset.from_dict`` each) and joined at the end by SAELens's own ``_consolidate_shards``.

A harvest folder holds one such folder per hook (named by the hook) and ``harvest.json``: the run's
identity (model, data fingerprint, hooks, dtype, context size, sampling, steering, ...), the shards
done and whether the run is complete. A shard is renamed into place only when written, so a run
stopped at any point resumes after its last whole shard; another job's folder is refused with the
fields that differ named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

IDENTITY_FILE = "harvest.json"
TMP_SHARDS = ".tmp_shards"
DTYPES = ("float32", "bfloat16", "float16")


class CacheMismatch(ValueError):
    """``--out`` holds another job's harvest (the message names what differs)."""


def features(hook: str, context_size: int, d_in: int, dtype: str):
    """The ``datasets.Features`` of one hook's cache, as ``CacheActivationsRunner`` declares them."""
    from datasets import Array2D, Features, Sequence, Value

    return Features({hook: Array2D(shape=(context_size, d_in), dtype=storage_dtype(dtype)),
                     "token_ids": Sequence(Value(dtype="int32"), length=context_size)})


def storage_dtype(dtype: str) -> str:
    """The column dtype for rows computed in ``dtype``: Arrow has no bfloat16 (SAELens's own runner cannot
    write one either), so bfloat16 rows are stored as float32, which holds every bfloat16 value exactly."""
    return "float32" if dtype == "bfloat16" else dtype


def hook_dir(out: str | Path, hook: str) -> Path:
    return Path(out) / hook


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in keys if old.get(k) != new.get(k)]


class CacheWriter:
    """Writes token rows' activations at several hooks into one SAELens cache per hook, resumably.

    ``identity``: a JSON-able dict naming the job; ``rows_per_shard``: rows in each shard. Use
    ``start()`` (-> rows already done), ``add(token_rows, {hook: [n, T, d] tensor})`` per batch and
    ``finish()`` (joins the shards; returns ``{hook: folder}``)."""

    def __init__(self, out: str | Path, identity: dict, hooks: list[str], context_size: int, d_in: int,
                 dtype: str = "float32", rows_per_shard: int = 256):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype {dtype!r} is not one of {DTYPES}")
        self.out, self.hooks, self.context_size, self.d_in, self.dtype = Path(out), list(hooks), int(context_size), int(d_in), dtype
        self.identity = dict(identity, hooks=list(hooks), context_size=int(context_size), d_in=int(d_in), dtype=dtype,
                             rows_per_shard=int(rows_per_shard))
        self.rows_per_shard = int(rows_per_shard)
        self.state = {"identity": self.identity, "shards": 0, "rows": 0, "complete": False}
        self._pending_rows: list = []
        self._pending: dict = {h: [] for h in self.hooks}

    # ---------------------------------------------------------------- job identity, resume
    def check(self) -> dict | None:
        """The state of a previous run of this job in ``out`` (None: a fresh folder); another job's
        folder is refused with what differs."""
        path = self.out / IDENTITY_FILE
        if not path.exists():
            if self.out.exists() and any(self.out.iterdir()):
                raise CacheMismatch(f"--out {str(self.out)!r} is not empty and holds no harvest: give an empty or new folder")
            return None
        old = json.loads(path.read_text())
        diff = _differences(old.get("identity", {}), self.identity)
        if diff:
            raise CacheMismatch(f"--out {str(self.out)!r} holds another harvest ({'; '.join(diff)}): "
                                f"give a new folder, or delete it to start over")
        return old

    def start(self) -> int:
        """Make the folders and return how many token rows earlier runs of this job already wrote."""
        old = self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        if old is not None:
            self.state = old
            for hook in self.hooks:  # a shard half-written when the last run stopped is dropped
                tmp = hook_dir(self.out, hook) / TMP_SHARDS
                for part in tmp.glob("*.partial") if tmp.exists() else ():
                    shutil.rmtree(part)
        else:
            for hook in self.hooks:
                (hook_dir(self.out, hook) / TMP_SHARDS).mkdir(parents=True, exist_ok=True)
            self._save()
        return int(self.state["rows"])

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    def _save(self) -> None:
        tmp = self.out / (IDENTITY_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        tmp.replace(self.out / IDENTITY_FILE)

    # ---------------------------------------------------------------- rows
    def add(self, token_rows, acts: dict) -> None:
        """One batch: ``token_rows`` [n, T] ints and, per hook, its activations [n, T, d_in]."""
        import torch

        token_rows = torch.as_tensor(token_rows)
        n = token_rows.shape[0]
        if token_rows.shape[1] != self.context_size:
            raise ValueError(f"token rows of length {token_rows.shape[1]} in a cache of context_size {self.context_size}")
        for hook in self.hooks:
            a = acts[hook]
            if tuple(a.shape) != (n, self.context_size, self.d_in):
                raise ValueError(f"activations at {hook} have shape {tuple(a.shape)}, expected {(n, self.context_size, self.d_in)}")
            self._pending[hook].append(a.detach().to("cpu", getattr(torch, self.dtype)).to(getattr(torch, storage_dtype(self.dtype))))
        self._pending_rows.append(token_rows.to(torch.int32))
        while sum(len(r) for r in self._pending_rows) >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        import torch
        from datasets import Dataset

        rows = torch.cat(self._pending_rows)
        shard, rest = rows[:n], rows[n:]
        name = f"shard_{int(self.state['shards']):05d}"
        for hook in self.hooks:
            acts = torch.cat(self._pending[hook])
            keep, self._pending[hook] = acts[:n], [acts[n:]] if len(acts) > n else []
            data = {hook: keep.numpy(), "token_ids": shard.numpy()}
            ds = Dataset.from_dict(data, features=features(hook, self.context_size, self.d_in, self.dtype))
            tmp = hook_dir(self.out, hook) / TMP_SHARDS
            ds.save_to_disk(str(tmp / (name + ".partial")), num_shards=1)
            (tmp / (name + ".partial")).rename(tmp / name)
        self._pending_rows = [rest] if len(rest) else []
        self.state["shards"] += 1
        self.state["rows"] += int(len(shard))
        self._save()  # after every hook's shard is in place: a resumed run restarts at a whole shard

    def finish(self) -> dict:
        """Write the last partial shard and join each hook's shards into its SAELens folder."""
        from sae_lens.cache_activations_runner import CacheActivationsRunner

        left = sum(len(r) for r in self._pending_rows)
        if left:
            self._flush(left)
        if not self.state["rows"]:
            raise ValueError("no token rows were harvested: the data gave no row of the context size")
        for hook in self.hooks:
            folder = hook_dir(self.out, hook)
            CacheActivationsRunner._consolidate_shards(folder / TMP_SHARDS, folder, copy_files=False)
        self.state["complete"] = True
        self._save()
        return {hook: hook_dir(self.out, hook) for hook in self.hooks}


def read_identity(folder: str | Path) -> dict | None:
    """The identity of the harvest a cache folder (a hook's folder or the harvest's) belongs to, if any."""
    folder = Path(folder)
    for path in (folder / IDENTITY_FILE, folder.parent / IDENTITY_FILE):
        if path.exists():
            return json.loads(path.read_text())
    return None


def check_cache(folder: str | Path, hook: str, d_in: int | None, context_size: int | None = None) -> tuple[Path, int, int]:
    """Refuse a cache that cannot feed an SAE at ``hook`` of width ``d_in`` (one line naming what differs),
    before anything trains; returns ``(the hook's cache folder, context_size, width)``. ``folder``: the
    hook's folder or a harvest holding it."""
    folder = Path(folder)
    if not (folder / "dataset_info.json").exists() and (folder / hook / "dataset_info.json").exists():
        folder = folder / hook
    info = folder / "dataset_info.json"
    if not info.exists():
        raise ValueError(f"--cached-activations {str(folder)!r} is not a finished SAELens activation cache "
                         f"(no dataset_info.json; a harvest that stopped is resumed by running it again)")
    feats = json.loads(info.read_text()).get("features", {})
    if hook not in feats:
        columns = sorted(k for k in feats if k != "token_ids")
        raise ValueError(f"the cache {str(folder)!r} holds {columns}, not the recipe's hook {hook!r}: "
                         f"harvest that hook, or train at the cache's hook (--override hook_name=...)")
    shape = tuple(feats[hook].get("shape", ()))
    if len(shape) != 2:
        raise ValueError(f"the cache column {hook!r} is not [context_size, d_in] (shape {shape})")
    if d_in is not None and shape[1] != d_in:
        raise ValueError(f"the cache at {hook} is {shape[1]} wide but the SAE's d_in is {d_in}: "
                         f"set --override sae.d_in={shape[1]}, or harvest the recipe's model")
    if context_size is not None and shape[0] != context_size:
        raise ValueError(f"the cache holds rows of {shape[0]} tokens, the recipe's context_size is {context_size}")
    return folder, int(shape[0]), int(shape[1])
