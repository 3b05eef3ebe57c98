"""Token rows from any dataset form a user has: a [N, T] tensor or list of rows, a ``datasets.Dataset``,
a saved dataset folder, a JSON / JSON-lines / parquet / text file, or a hub name; a text column is
tokenised and packed into rows of ``context_size`` tokens (a pre-tokenised ``tokens`` column is used as
it is). The rule: with ``prepend_bos``, each packed row starts with BOS and documents are joined with
EOS between them; rows are shuffled with ``seed`` before ``n_samples`` are taken.
"""

from __future__ import annotations

from pathlib import Path

from reason_plugins.saes import load_sae  # noqa: F401


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
