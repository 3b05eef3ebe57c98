"""SAE training data for the R1 distills: LMSYS-Chat-1M + OpenThoughts-114k, tokenised for a
given model, mixed by ratio and packed into SAELens-ready pre-tokenised datasets; plus the
OpenThoughts text subset that ReasonScore runs on. Works on local JSON/JSONL/parquet files.

Formatting (what the paper's data looks like to the model):

- LMSYS-Chat-1M rows (``conversation``: [{role, content}], plus conversation_id, model, turn,
  language, ...): the model's own chat template over the whole conversation
  (``<｜begin▁of▁sentence｜><｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>``).
- OpenThoughts-114k rows, default config (``system``, ``conversations``: [{from: user|assistant,
  value}]): the assistant value is ``<|begin_of_thought|> R <|end_of_thought|>
  <|begin_of_solution|> S <|end_of_solution|>``; we render it as R1 itself writes:
  ``<｜Assistant｜><think>\\nR\\n</think>\\n\\nS<｜end▁of▁sentence｜>``, the prompt from the chat
  template with the generation prompt (which already opens ``<think>`` in R1's current template).
  The ``metadata`` config (``problem``, ``deepseek_reasoning``, ``deepseek_solution``) — what the
  reference used — gives the same text. The OpenThoughts ``system`` prompt describes the
  ``<|begin_of_thought|>`` format we convert away, and DeepSeek advises no system prompt for R1,
  so none is used unless asked (``system_prompt="dataset"`` or any text). The reference added
  its own system prompt and one newline after ``</think>``; we follow R1's real output instead.

Packing: the documents of one source (shuffled with ``seed``) are packed by the one rule stated in
``token_data`` with ``prepend_bos=False`` (train with ``prepend_bos=False``, as the paper did): tokenised
without extra special tokens (the template carries BOS/EOS; a render that already ends with EOS gets
none added, so only an LMSYS conversation whose last turn is the user's gets one EOS closing it),
concatenated and cut into ``context_size`` rows, the remainder dropped (the reference's
``tokenize_and_concatenate`` without BOS). Mixing draws whole rows per source in the given ratio.
The scoring subset is held out: its documents never reach the training rows.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from reason_plugins.cli_args import check_int
from sae_lens_ext.inputs.token_data import load_data, pack_texts

THOUGHT = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.DOTALL)
SOLUTION = re.compile(r"<\|begin_of_solution\|>(.*?)<\|end_of_solution\|>", re.DOTALL)
SOURCES = ("lmsys", "openthoughts")


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .json (list or JSON Lines), .jsonl or .parquet file, or a ``save_to_disk`` folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        return list(load_data(path, split="train"))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(path)).to_pylist()
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"data file {str(path)!r}: expected .json, .jsonl, .parquet or a saved dataset folder")
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def lmsys_text(record: dict, tokenizer) -> str:
    """One LMSYS-Chat conversation through the model's chat template."""
    conversation = record.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"LMSYS record {record.get('conversation_id', '?')!r} has no 'conversation' list "
                         f"of {{role, content}}; keys: {sorted(record)}")
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _openthoughts_parts(record: dict) -> tuple[str, str, str, str | None]:
    """(user, reasoning, solution, dataset system prompt) of either OpenThoughts schema."""
    if "conversations" in record:
        turns = record["conversations"]
        user = next((t["value"] for t in turns if t.get("from") in ("user", "human")), None)
        answer = next((t["value"] for t in turns if t.get("from") in ("assistant", "gpt")), None)
        if user is None or answer is None:
            raise ValueError(f"OpenThoughts record lacks a user or assistant turn: {[t.get('from') for t in turns]}")
        thought, solution = THOUGHT.search(answer), SOLUTION.search(answer)
        if thought is None or solution is None:
            raise ValueError("OpenThoughts assistant turn lacks <|begin_of_thought|>...<|end_of_thought|> or "
                             f"<|begin_of_solution|>...<|end_of_solution|>: {answer[:80]!r}")
        return user, thought.group(1).strip(), solution.group(1).strip(), record.get("system")
    if "deepseek_reasoning" in record:  # the `metadata` config
        return record["problem"], record["deepseek_reasoning"].strip(), record["deepseek_solution"].strip(), None
    raise ValueError(f"not an OpenThoughts record (no 'conversations' nor 'deepseek_reasoning'); keys: {sorted(record)}")


def openthoughts_text(record: dict, tokenizer, system_prompt: str | None = None) -> str:
    """One OpenThoughts problem + trace as R1 writes it (see the module docstring).
    ``system_prompt``: None (default), ``"dataset"`` (the row's own) or a text."""
    user, reasoning, solution, dataset_system = _openthoughts_parts(record)
    system = dataset_system if system_prompt == "dataset" else system_prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prompt.endswith("<think>\n"):
        opening = ""
    elif prompt.endswith("<think>"):
        opening = "\n"
    else:  # older R1 templates stop at <｜Assistant｜>
        opening = "<think>\n"
    return f"{prompt}{opening}{reasoning}\n</think>\n\n{solution}{tokenizer.eos_token or ''}"


def pack_rows(texts: list[str], tokenizer, context_size: int, max_rows: int | None = None,
              desc: str = "tokenising", batch_size: int = 256) -> list[list[int]]:
    """At most ``max_rows`` rows of ``context_size`` tokens, packed by ``token_data``'s one rule with
    no BOS column (``prepend_bos=False``, as the paper trained); a progress bar over the batches."""
    return list(pack_texts(texts, tokenizer, context_size, prepend_bos=False, max_rows=max_rows,
                           batch_size=batch_size, progress=True, desc=desc))


def parse_ratio(text: str | dict) -> dict[str, float]:
    """``"lmsys=1,openthoughts=1"`` -> weights (normalised later); unknown names raise."""
    if isinstance(text, dict):
        ratio = dict(text)
    else:
        ratio = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, weight = part.partition("=")
            try:
                ratio[name.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"bad ratio part {part!r}: expected NAME=WEIGHT, e.g. lmsys=1,openthoughts=1") from None
    bad = sorted(set(ratio) - set(SOURCES))
    if bad:
        raise ValueError(f"bad ratio {text!r}: unknown source(s) {bad}; expected {SOURCES}")
    if not ratio or any(w < 0 for w in ratio.values()) or not sum(ratio.values()):
        raise ValueError(f"bad ratio {text!r}: expected non-negative weights for {SOURCES}, not all zero")
    return ratio


def mix_rows(rows: dict[str, list], ratio: dict[str, float], seed: int = 42, max_rows: int | None = None) -> tuple[list, dict]:
    """Rows drawn from each source in proportion ``ratio``, as many as the scarcest source allows
    (or ``max_rows``), shuffled together. Returns (rows, {source: count})."""
    weights = {s: w for s, w in ratio.items() if w > 0}
    missing = [s for s in weights if not rows.get(s)]
    if missing:
        raise ValueError(f"ratio asks for {missing} but those sources gave no rows")
    total_weight = sum(weights.values())
    total = min(len(rows[s]) * total_weight / w for s, w in weights.items())
    total = int(min(total, max_rows) if max_rows else total)
    rng = random.Random(seed)
    mixed, counts = [], {}
    for source, w in weights.items():
        n = int(total * w / total_weight)
        mixed += rng.sample(rows[source], n)
        counts[source] = n
    rng.shuffle(mixed)
    return mixed, counts


def _save(dataset, out: Path, push_to_hub: str | None, private: bool) -> None:
    """``save_to_disk`` into a temp sibling, then rename (a crash never leaves a half dataset)."""
    import shutil
    import tempfile

    from datasets import DatasetDict

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        DatasetDict({"train": dataset}).save_to_disk(str(tmp / "d"))
        if out.exists():
            shutil.rmtree(out)
        (tmp / "d").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        DatasetDict({"train": dataset}).push_to_hub(push_to_hub, private=private)


def prepare(tokenizer, out_dir: str | Path, *, lmsys: list | None = None, openthoughts: list | None = None,
            ratio: str | dict = "lmsys=1,openthoughts=1", context_size: int = 1024, max_tokens: int | None = None,
            scoring_samples: int = 0, system_prompt: str | None = None, seed: int = 42,
            push_to_hub: str | None = None, private: bool = False) -> dict:
    """Build the datasets under ``out_dir``: ``lmsys-tokenized``, ``openthoughts-tokenized``,
    ``mixed-tokenized`` (column ``tokens``, SAELens pre-tokenised) and ``openthoughts-scoring``
    (column ``text``); ``meta.json`` records what was done. ``lmsys``/``openthoughts`` are lists
    of file paths or of records. ``push_to_hub`` is a repo-id prefix (``user/name``) or None."""
    from datasets import Dataset

    from reason_plugins.files import write_json_atomic

    if not lmsys and not openthoughts:
        raise ValueError("give at least one LMSYS or OpenThoughts input")
    check_int("context_size", context_size, 2)
    check_int("scoring_samples", scoring_samples, 0, optional=True)
    check_int("max_tokens", max_tokens, context_size, optional=True)
    parse_ratio(ratio)  # a bad ratio is refused before any file is read
    out_dir, rng = Path(out_dir), random.Random(seed)
    records = {"lmsys": _load_all(lmsys, "lmsys"), "openthoughts": _load_all(openthoughts, "openthoughts")}
    for records_of in records.values():
        rng.shuffle(records_of)
    meta = {"tokenizer": getattr(tokenizer, "name_or_path", None), "context_size": context_size, "seed": seed,
            "inputs": {s: len(r) for s, r in records.items()}, "datasets": {}}
    scoring = records["openthoughts"][:scoring_samples]
    records["openthoughts"] = records["openthoughts"][scoring_samples:]  # held out from training
    if scoring_samples:
        if len(scoring) < scoring_samples:
            raise ValueError(f"asked for {scoring_samples} scoring samples but only {len(scoring)} OpenThoughts rows exist")
        texts = [openthoughts_text(r, tokenizer, system_prompt) for r in scoring]
        _save(Dataset.from_dict({"text": texts}), out_dir / "openthoughts-scoring",
              push_to_hub and f"{push_to_hub}-openthoughts-scoring", private)
        meta["datasets"]["openthoughts-scoring"] = {"rows": len(texts)}
    max_rows = max_tokens // context_size if max_tokens else None
    render = {"lmsys": lambda r: lmsys_text(r, tokenizer),
              "openthoughts": lambda r: openthoughts_text(r, tokenizer, system_prompt)}
    rows = {}
    for source in SOURCES:
        if not records[source]:
            continue
        texts = []
        for i, record in enumerate(records[source]):
            try:
                texts.append(render[source](record))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{source} record {i} (after shuffling with seed {seed}): {exc}") from exc
        rows[source] = pack_rows(texts, tokenizer, context_size, max_rows, desc=f"tokenising {source}")
        if rows[source]:
            _save(Dataset.from_dict({"tokens": rows[source]}), out_dir / f"{source}-tokenized",
                  push_to_hub and f"{push_to_hub}-{source}-tokenized", private)
        meta["datasets"][f"{source}-tokenized"] = {"rows": len(rows[source]), "documents": len(texts)}
    weights = {s: w for s, w in parse_ratio(ratio).items() if s in rows}
    if weights and sum(weights.values()) > 0:
        mixed, counts = mix_rows(rows, weights, seed, max_rows)
        if not mixed:
            raise ValueError(f"no full row of context_size {context_size}: the inputs are too short")
        _save(Dataset.from_dict({"tokens": mixed}), out_dir / "mixed-tokenized",
              push_to_hub and f"{push_to_hub}-mixed-tokenized", private)
        meta["datasets"]["mixed-tokenized"] = {"rows": len(mixed), "from": counts, "ratio": weights}
    if not any(info["rows"] for info in meta["datasets"].values()):
        raise ValueError(f"the inputs gave no full row of context_size {context_size} (nothing written); inputs: {meta['inputs']}")
    write_json_atomic(out_dir / "meta.json", meta)
    return meta


def _load_all(inputs, source: str = "input") -> list[dict]:
    records = []
    for item in inputs or []:
        if isinstance(item, (str, Path)):
            got = read_records(item)
            if not got:
                raise ValueError(f"{source} file {str(item)!r} has no records (expected a non-empty .json/.jsonl/.parquet "
                                 f"or saved dataset)")
            records += got
        else:
            records.append(item)
    return records
