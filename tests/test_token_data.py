"""The one BOS/EOS packing rule of ``sae_lens_ext.inputs.token_data``, checked on a word-level fake tokenizer
(no model), and its three callers (scoring's ``token_batches``, training's ``tokens_dataset``,
``data_prep.pack_rows``) against one naive reference written here."""

from __future__ import annotations

import pytest

from sae_lens_ext.inputs.token_data import pack_documents, pack_texts, token_batches, tokens_dataset
from sae_lens_ext.training import data_prep
from sae_lens_ext.training import train as training

BOS, EOS = 1, 2


class WordTokenizer:
    """Each whitespace-separated word is one id: ``<s>``/``</s>`` are BOS/EOS (when the tokenizer has
    them), ``wN`` is N + 10. Never adds special tokens itself."""

    def __init__(self, bos_token_id=BOS, eos_token_id=EOS):
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id

    def _id(self, word):
        return {"<s>": BOS, "</s>": EOS}.get(word) or int(word[1:]) + 10

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False, "the packer must tokenise without special tokens"
        return {"input_ids": [[self._id(w) for w in text.split()] for text in texts]}


def naive_rows(docs, context_size, bos, eos, prepend_bos):
    """The rule, spelt out on a whole stream: EOS closes each doc not already ending in it; cut; drop the rest."""
    stream = []
    for doc in docs:
        stream += list(doc) + ([eos] if eos is not None and (not doc or doc[-1] != eos) else [])
    body = context_size - 1 if prepend_bos else context_size
    return [([bos] if prepend_bos else []) + stream[i * body:(i + 1) * body] for i in range(len(stream) // body)]


def test_bos_column_eos_between_documents_and_remainder_dropped():
    docs = [[10, 11, 12], [13, 14], [15, 16, 17, 18]]
    rows = list(pack_documents(docs, 4, bos_id=BOS, eos_id=EOS, prepend_bos=True))
    # stream: 10 11 12 EOS 13 14 EOS 15 16 17 18 EOS (12 tokens) -> 4 rows of BOS + 3; nothing left
    assert rows == [[BOS, 10, 11, 12], [BOS, EOS, 13, 14], [BOS, EOS, 15, 16], [BOS, 17, 18, EOS]]
    rows = list(pack_documents(docs, 5, bos_id=BOS, eos_id=EOS, prepend_bos=True))
    assert rows == [[BOS, 10, 11, 12, EOS], [BOS, 13, 14, EOS, 15], [BOS, 16, 17, 18, EOS]]
    rows = list(pack_documents(docs, 6, bos_id=BOS, eos_id=EOS, prepend_bos=True))
    assert rows == [[BOS, 10, 11, 12, EOS, 13], [BOS, 14, EOS, 15, 16, 17]]  # "18 EOS" dropped


def test_eos_not_doubled_when_a_document_already_ends_with_it():
    rows = list(pack_documents([[10, EOS], [11, 12], [EOS], []], 3, bos_id=BOS, eos_id=EOS, prepend_bos=False))
    assert rows == [[10, EOS, 11], [12, EOS, EOS]]  # the lone-EOS doc keeps its one EOS; the empty doc gets one
    flat = [t for row in pack_documents([[10, EOS]] * 6, 4, bos_id=BOS, eos_id=EOS, prepend_bos=False) for t in row]
    assert flat == [10, EOS] * 6


def test_no_bos_rows_are_the_bos_rows_shifted():
    docs = [[10 + i for i in range(n)] for n in (5, 1, 7, 3, 9)]
    with_bos = list(pack_documents(docs, 6, bos_id=BOS, eos_id=EOS, prepend_bos=True))
    without = list(pack_documents(docs, 5, bos_id=BOS, eos_id=EOS, prepend_bos=False))
    assert len(with_bos) == len(without) > 3
    assert all(a[0] == BOS and a[1:] == b for a, b in zip(with_bos, without))


def test_tokenizer_without_eos_or_bos():
    docs = [[10, 11], [12, 13, 14], [15]]
    assert list(pack_documents(docs, 3, bos_id=BOS, eos_id=None, prepend_bos=True)) == [[BOS, 10, 11], [BOS, 12, 13], [BOS, 14, 15]]
    assert list(pack_documents(docs, 3, bos_id=None, eos_id=None, prepend_bos=False)) == [[10, 11, 12], [13, 14, 15]]
    with pytest.raises(ValueError, match="no BOS token.*prepend_bos=False"):
        pack_documents(docs, 3, bos_id=None, eos_id=EOS, prepend_bos=True)  # refused at the call, not at the first row
    with pytest.raises(ValueError, match="no BOS token"):
        tokens_dataset(WordTokenizer(bos_token_id=None), ["w1 w2 w3"] * 4, 3)


@pytest.mark.parametrize("bad", [1, 0, -4, 2.0, True, None])
def test_context_size_below_two_or_not_an_int_is_refused(bad):
    with pytest.raises(ValueError, match=f"context_size={bad!r} is invalid .*int >= 2"):
        pack_documents([[10, 11]], bad, bos_id=BOS, eos_id=EOS, prepend_bos=False)


def test_pack_texts_max_rows_and_bad_max_rows():
    texts = [f"w{i} w{i + 1} w{i + 2}" for i in range(50)]
    tok = WordTokenizer()
    full = list(pack_texts(texts, tok, 8, prepend_bos=True, batch_size=7))
    assert full == naive_rows(tok(texts, add_special_tokens=False)["input_ids"], 8, BOS, EOS, True)
    assert list(pack_texts(iter(texts), tok, 8, prepend_bos=True, max_rows=5, batch_size=3)) == full[:5]
    with pytest.raises(ValueError, match="max_rows=-1 is invalid"):
        pack_texts(texts, tok, 8, prepend_bos=True, max_rows=-1)


# Some texts end with the EOS string (as chat renders do), some do not (plain statements), one is empty.
MIXED_TEXTS = [" ".join(f"w{(7 * i + j) % 40}" for j in range(i % 9)) + (" </s>" if i % 3 == 0 else "") for i in range(60)]


@pytest.mark.parametrize("context_size", [2, 7, 16])
def test_all_three_callers_pack_by_the_one_rule(context_size):
    import datasets

    tok = WordTokenizer()
    docs = tok(MIXED_TEXTS, add_special_tokens=False)["input_ids"]
    with_bos, without_bos = naive_rows(docs, context_size, BOS, EOS, True), naive_rows(docs, context_size, BOS, EOS, False)
    assert len(with_bos) >= 10 and any(not d or d[-1] != EOS for d in docs) and any(d and d[-1] == EOS for d in docs)

    scoring = [row for batch in token_batches(datasets.Dataset.from_dict({"text": MIXED_TEXTS}), tok, batch_size=3,
                                              context_size=context_size, prepend_bos=True) for row in batch.tolist()]
    assert scoring == with_bos
    scoring_no_bos = [row for batch in token_batches(datasets.Dataset.from_dict({"text": MIXED_TEXTS}), tok, batch_size=4,
                                                     context_size=context_size, prepend_bos=False) for row in batch.tolist()]
    assert scoring_no_bos == without_bos
    assert tokens_dataset(tok, MIXED_TEXTS, context_size)["tokens"] == with_bos
    assert tokens_dataset(tok, MIXED_TEXTS, context_size, prepend_bos=False)["tokens"] == without_bos
    assert data_prep.pack_rows(MIXED_TEXTS, tok, context_size, batch_size=5) == without_bos
    assert data_prep.pack_rows(MIXED_TEXTS, tok, context_size, max_rows=3) == without_bos[:3]


def test_tokens_dataset_too_few_tokens_names_the_size():
    with pytest.raises(ValueError, match="fewer tokens than one row of context_size 64"):
        tokens_dataset(WordTokenizer(), ["w1 w2", "w3"], 64)


def test_tiny_model_training_rows_are_unchanged_by_the_move(tokenizer_dir):
    """``tiny_models.training_texts`` end with the EOS string, so the rule adds no EOS: the rows are
    what the old ``training.tokens_dataset`` (plain concatenation, BOS + context_size-1) made."""
    from transformers import AutoTokenizer

    from reason_plugins.tiny_models import training_texts

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = training_texts(tok, 40, seed=3)
    ids = []
    for text in texts:  # the old algorithm, verbatim in spirit
        ids += tok(text, add_special_tokens=False)["input_ids"]
    body = 127
    old = [[tok.bos_token_id] + ids[i:i + body] for i in range(0, len(ids) - body + 1, body)]
    new = tokens_dataset(tok, texts, context_size=128)["tokens"]
    assert len(old) >= 5 and new == old
    assert ids.count(tok.eos_token_id) == len(texts)  # each text carries exactly its own EOS


def test_load_local_dataset_reads_through_load_data(tmp_path):
    """None for a non-local name (SAELens loads it); local folders and files through ``load_data``."""
    import datasets

    assert training.load_local_dataset(tmp_path / "not-here") is None
    rows = {"tokens": [[1, 2, 3], [4, 5, 6]]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert training.load_local_dataset(tmp_path / "dd")["tokens"] == rows["tokens"]
    (tmp_path / "rows.jsonl").write_text('{"tokens": [1, 2, 3]}\n{"tokens": [4, 5, 6]}\n')
    assert training.load_local_dataset(tmp_path / "rows.jsonl")["tokens"] == rows["tokens"]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match="no split 'train'; splits: \\['test'\\]"):
        training.load_local_dataset(tmp_path / "no_train")
    (tmp_path / "rows.csv").write_text("tokens\n1\n")
    with pytest.raises(ValueError, match="expected a save_to_disk folder or a .json/.jsonl/.parquet file"):
        training.load_local_dataset(tmp_path / "rows.csv")
    assert data_prep.read_records(tmp_path / "dd") == [{"tokens": [1, 2, 3]}, {"tokens": [4, 5, 6]}]
