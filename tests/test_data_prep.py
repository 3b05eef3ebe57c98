"""Dataset preparation on fixture files with the real LMSYS-Chat-1M / OpenThoughts-114k schemas."""

from __future__ import annotations

import json

import pytest

from reason_plugins.corpus import reasoning_examples
from sae_lens_ext.training import data_prep
from tests.support.records import OT_SYSTEM, lmsys_records, openthoughts_records


def write_fixture_files(root) -> dict:
    """LMSYS as JSON Lines, OpenThoughts as parquet (the formats the hub serves)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    lmsys = root / "lmsys-chat-1m.jsonl"
    lmsys.write_text("".join(json.dumps(r) + "\n" for r in lmsys_records()))
    ot = root / "openthoughts-114k.parquet"
    pq.write_table(pa.Table.from_pylist(openthoughts_records()), str(ot))
    return {"lmsys": lmsys, "openthoughts": ot}


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    files = write_fixture_files(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("prepared")
    meta = data_prep.prepare(tokenizer, out, lmsys=[files["lmsys"]], openthoughts=[files["openthoughts"]],
                             context_size=64, scoring_samples=10, seed=1)
    return out, meta


def test_openthoughts_markers_become_think_section(tokenizer):
    record = openthoughts_records(1)[0]
    text = data_prep.openthoughts_text(record, tokenizer)
    assert "<|begin_of_thought|>" not in text and "<|begin_of_solution|>" not in text
    assert text.count("<think>") == 1 and text.count("</think>") == 1
    assert text.startswith(tokenizer.bos_token + "<｜User｜>Return your final response")
    thinking, answer = text.split("</think>")
    assert thinking.endswith(reasoning_examples(1)[0]["thinking"] + "\n")  # markers and padding stripped
    assert answer.startswith("\n\n") and "\\boxed{" in answer and text.endswith(tokenizer.eos_token)
    assert OT_SYSTEM[:30] not in text  # the dataset's system prompt is not used by default


def test_openthoughts_metadata_schema_gives_the_same_text(tokenizer):
    ex = reasoning_examples(1)[0]
    default = openthoughts_records(1)[0]
    metadata = {"problem": default["conversations"][0]["value"], "deepseek_reasoning": ex["thinking"],
                "deepseek_solution": ex["answer"], "domain": "math"}
    assert data_prep.openthoughts_text(metadata, tokenizer) == data_prep.openthoughts_text(default, tokenizer)


def test_lmsys_uses_the_chat_template(tokenizer):
    text = data_prep.lmsys_text(lmsys_records(1)[0], tokenizer)
    assert text.startswith(tokenizer.bos_token + "<｜User｜>")
    assert "<｜Assistant｜>" in text and text.endswith(tokenizer.eos_token)


def test_prepare_writes_saelens_ready_datasets(prepared, tokenizer):
    import datasets

    out, meta = prepared
    for name in ("lmsys-tokenized", "openthoughts-tokenized", "mixed-tokenized"):
        ds = datasets.load_from_disk(str(out / name))["train"]
        assert ds.column_names == ["tokens"] and len(ds) == meta["datasets"][name]["rows"] > 0
        assert {len(row) for row in ds["tokens"]} == {64}
    ot = datasets.load_from_disk(str(out / "openthoughts-tokenized"))["train"]
    decoded = tokenizer.decode(sum(ot["tokens"][:6], []))
    assert "<think>" in decoded and "</think>" in decoded
    mixed = meta["datasets"]["mixed-tokenized"]["from"]
    assert abs(mixed["lmsys"] - mixed["openthoughts"]) <= 1  # 1:1 by default
    assert json.loads((out / "meta.json").read_text())["context_size"] == 64


def test_packed_rows_are_what_the_old_plain_concatenation_made(tokenizer):
    """Every render ends with the EOS string, so the one packing rule (``token_data``) adds no EOS and
    ``pack_rows`` gives the rows of the packer it replaced (plain concatenation, no BOS), written here."""
    texts = [data_prep.lmsys_text(r, tokenizer) for r in lmsys_records(20)]
    texts += [data_prep.openthoughts_text(r, tokenizer) for r in openthoughts_records(20)]
    assert all(t.endswith(tokenizer.eos_token) for t in texts)
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids]
    old = [stream[i:i + 64] for i in range(0, len(stream) - 63, 64)]
    assert len(old) >= 10 and stream.count(tokenizer.eos_token_id) == len(texts)
    assert data_prep.pack_rows(texts, tokenizer, 64, batch_size=7) == old
    assert data_prep.pack_rows(texts, tokenizer, 64, max_rows=4) == old[:4]


def test_scoring_subset_is_held_out(prepared):
    import datasets

    out, meta = prepared
    scoring = datasets.load_from_disk(str(out / "openthoughts-scoring"))["train"]
    assert len(scoring) == 10 and all("</think>" in t for t in scoring["text"])
    assert meta["datasets"]["openthoughts-tokenized"]["documents"] == meta["inputs"]["openthoughts"] - 10


def test_ratio_changes_the_mix(tokenizer, tmp_path):
    meta = data_prep.prepare(tokenizer, tmp_path, lmsys=lmsys_records(), openthoughts=openthoughts_records(),
                             ratio="lmsys=1,openthoughts=3", context_size=64)
    counts = meta["datasets"]["mixed-tokenized"]["from"]
    assert counts["openthoughts"] >= 3 * counts["lmsys"] - 3 and counts["lmsys"] > 0


def test_bad_inputs_are_named(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown source.*'books'"):
        data_prep.parse_ratio("lmsys=1,books=2")
    broken = openthoughts_records(2)
    broken[1]["conversations"][1]["value"] = "no markers here"
    with pytest.raises(ValueError, match="openthoughts record .*begin_of_thought"):
        data_prep.prepare(tokenizer, tmp_path, openthoughts=broken, context_size=32)
    with pytest.raises(ValueError, match="has no 'conversation' list"):
        data_prep.lmsys_text({"conversation_id": "x", "text": "hi"}, tokenizer)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="data.csv.*expected .json"):
        data_prep.read_records(tmp_path / "data.csv")


def test_cli_data(tokenizer_dir, tmp_path):
    from reason_plugins.app.cli import main

    files = write_fixture_files(tmp_path / "raw")
    rc = main(["data", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out"), "--lmsys", str(files["lmsys"]),
               "--openthoughts", str(files["openthoughts"]), "--context-size", "32", "--scoring-samples", "5"])
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert rc == 0 and meta["datasets"]["openthoughts-scoring"]["rows"] == 5
    assert meta["datasets"]["mixed-tokenized"]["rows"] > 0
