"""Token data, one place for every caller: ReasonScore scoring (and the contexts, dashboards and diff
built on it), SAE training datasets (``tokens_dataset``) and ``reason-sae data`` all load and pack here.

Loading: ``load_data`` takes any dataset form a user has — a ``datasets.Dataset``, a saved dataset
folder, a JSON / JSON-lines / parquet file, or a hub name; ``token_batches`` also takes a [N, T] tensor
or list of rows. A pre-tokenised ``tokens`` (or ``input_ids``) column is used as it is; a text column is
tokenised and packed.

The packing rule (``pack_documents``; the only packer): each document is tokenised without special
tokens; EOS closes every document unless its last token already is EOS (and only when the tokenizer
has an EOS); documents are concatenated in order; the stream is cut into rows of ``context_size``
tokens — with ``prepend_bos``, BOS then ``context_size - 1`` stream tokens; the remainder is dropped.
This is TransformerLens's ``tokenize_and_concatenate`` (documents joined by EOS). Texts that already end
with the EOS string (R1-style chat renders, ``tiny_models.training_texts``, ``data_prep``'s renders)
pack exactly as a plain concatenation would; plain texts without it (e.g. ChatML transcripts ending in
``<|im_end|>\\n``, plain statements) get one EOS between documents. Scoring shuffles dataset rows with
``seed`` before packing and takes the first ``n_samples`` rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from reason_plugins.cli_args import check_int

# Names the packing rule of the docstring in cache keys of data packed here (e.g. the real demo's SAE): change it with the rule.
PACKING_RULE = "eos-closes-each-document/1"


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


def pack_documents(documents: Iterable[Sequence[int]], context_size: int, *, bos_id: int | None,
                   eos_id: int | None, prepend_bos: bool) -> Iterator[list[int]]:
    """Rows of ``context_size`` token ids from documents' token ids, by the rule in the module docstring.
    The arguments are checked now, not at the first row: ``context_size`` an int >= 2, a BOS id when
    ``prepend_bos``."""
    check_int("context_size", context_size, 2)
    if prepend_bos and bos_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token (bos_token_id is None); "
                         "pass prepend_bos=False or use a tokenizer with a BOS token")
    return _pack(documents, context_size, bos_id, eos_id, prepend_bos)


def _pack(documents, context_size, bos_id, eos_id, prepend_bos):
    head = [int(bos_id)] if prepend_bos else []
    body = context_size - len(head)
    stream: list[int] = []
    for doc in documents:
        doc = [int(t) for t in doc]
        stream += doc
        if eos_id is not None and (not doc or doc[-1] != eos_id):
            stream.append(int(eos_id))
        full = len(stream) - len(stream) % body
        for start in range(0, full, body):
            yield head + stream[start:start + body]
        del stream[:full]


def pack_texts(texts: Iterable[str], tokenizer, context_size: int, *, prepend_bos: bool, max_rows: int | None = None,
               batch_size: int = 256, progress: bool = False, desc: str = "tokenising") -> Iterator[list[int]]:
    """``texts`` tokenised in batches of ``batch_size`` (no special tokens added) and packed by
    ``pack_documents`` with the tokenizer's BOS/EOS; at most ``max_rows`` rows (texts past the last
    row needed are not tokenised); a tqdm bar over the batches when ``progress``."""
    check_int("max_rows", max_rows, 0, optional=True)
    check_int("batch_size", batch_size, 1)
    rows = pack_documents(_tokenised(texts, tokenizer, batch_size, progress, desc), context_size,
                          bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, prepend_bos=prepend_bos)
    return rows if max_rows is None else islice(rows, max_rows)


def _tokenised(texts, tokenizer, batch_size, progress, desc):
    """Each text's token ids (no special tokens), tokenised ``batch_size`` texts at a time."""
    from tqdm.auto import tqdm

    total = -(-len(texts) // batch_size) if isinstance(texts, Sequence) else None
    texts = iter(texts)
    with tqdm(total=total, desc=desc, unit="batch", disable=not progress) as bar:
        while batch := list(islice(texts, batch_size)):
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            bar.update(1)


def tokens_dataset(tokenizer, texts: list[str], context_size: int, prepend_bos: bool = True, *, progress: bool = False):
    """``texts`` packed into a ``datasets.Dataset`` with one column ``tokens`` (the layout SAELens
    expects of a pre-tokenised dataset); raises when they do not fill one row."""
    from datasets import Dataset

    rows = list(pack_texts(texts, tokenizer, context_size, prepend_bos=prepend_bos, progress=progress, desc="packing"))
    if not rows:
        count = f"{len(texts)} " if isinstance(texts, Sequence) else ""
        raise ValueError(f"the {count}texts give fewer tokens than one row of context_size {context_size}")
    return Dataset.from_dict({"tokens": rows})


def _token_rows(data, tokenizer, context_size, prepend_bos, seed, text_column):
    """Every token row of the data, in order (documents shuffled by ``seed`` when it is a dataset), each with
    its ``scored`` mask (a dataset's ``scored`` column, 1 where a position may be counted) or None."""
    import torch

    if isinstance(data, torch.Tensor) or (isinstance(data, list) and data and isinstance(data[0], (list, tuple))):
        yield from ((list(map(int, row)), None) for row in data)
        return
    ds = load_data(data)
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    for col in ("tokens", "input_ids"):
        if col in ds.column_names:
            masked = SCORED_COLUMN in ds.column_names
            for start in range(0, len(ds), 256):
                part = ds[start:start + 256]
                yield from zip(part[col], part[SCORED_COLUMN] if masked else [None] * len(part[col]))
            return
    if text_column not in ds.column_names:
        raise ValueError(f"dataset has no {text_column!r} column and no 'tokens' column; columns: {ds.column_names}")
    texts = (text for start in range(0, len(ds), 64) for text in ds[start:start + 64][text_column])
    yield from ((row, None) for row in pack_texts(texts, tokenizer, context_size, prepend_bos=prepend_bos, batch_size=64))


SCORED_COLUMN = "scored"  # beside "tokens": 1 where a position may be counted (a generated token), 0 for context / padding


def token_batches(data, tokenizer, *, batch_size=8, context_size=1024, prepend_bos=True, n_samples=None,
                  seed=None, text_column="text", num_chunks=1, chunk_index=0, with_scored=False):
    """Batches [B, T] of this shard's rows: row i of the first ``n_samples`` goes to shard i % num_chunks.
    ``with_scored``: ``(tokens, scored)`` pairs instead, ``scored`` [B, T] bool from the dataset's ``scored``
    column (rows of the model's own continuations: the prompt is context, not data), or None without one."""
    import torch

    batch, masks = [], []

    def done():
        tokens = torch.tensor(batch, dtype=torch.long)
        if not with_scored:
            return tokens
        return tokens, (torch.tensor(masks, dtype=torch.bool) if all(m is not None for m in masks) else None)

    for i, (row, mask) in enumerate(_token_rows(data, tokenizer, context_size, prepend_bos, seed, text_column)):
        if n_samples is not None and i >= n_samples:
            break
        if i % num_chunks != chunk_index:
            continue
        if batch and len(row) != len(batch[0]):
            raise ValueError(f"token rows must all have one length; got {len(batch[0])} and {len(row)} (row {i})")
        batch.append(row)
        masks.append(mask)
        if len(batch) == batch_size:
            yield done()
            batch, masks = [], []
    if batch:
        yield done()
