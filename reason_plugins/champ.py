"""CHAMP (Concept and Hint-Augmented Math Problems, pip ``champ-dataset``, MIT) as real text.

The package ships 270 competition-level math problems with step-by-step reference solutions, hints
and concepts, and, per problem, the transcripts of GPT-3.5 / GPT-4 / GPT-4 Turbo / PaLM 2 solving it
under 18 prompt settings (~19k). Here they become:

- ``reasoning_texts``: the models' first answers (real step-by-step reasoning, full of "Let me",
  "However", "Therefore", "But", ...) and the reference solutions — the "reasoning" side of a
  ReasonScore / SAE corpus;
- ``plain_texts``: problem statements, hints and concept definitions — text about the same
  mathematics with (almost) no reasoning moves, for contrast;
- ``problems`` / ``gold_answers``: the problems with their final answers turned into forms a
  symbolic checker understands (``C(10, 5)`` -> ``\\binom{10}{5}``, ``sqrt(3)/3`` -> ``\\sqrt{3}/3``,
  alternatives after "or equivalently" kept, approximations dropped); ``answer_form`` says which
  answers are numbers, fractions, expressions or free text (the lm-eval task keeps the checkable ones).

The JSON file is read straight from the installed package (no import of its module needed); pure
Python, no host library.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from functools import lru_cache
from pathlib import Path

PACKAGE, VERSION_FILE = "champ_dataset", "v0"


def data_file() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the CHAMP corpus needs the package champ-dataset; run `make setup` "
                                  "(or pip install champ-dataset==1.0.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_files" / f"{VERSION_FILE}.json"


@lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads(data_file().read_text())


def first_model_answer(conversation: dict) -> str | None:
    """The model's first reply in one CHAMP conversation (the solution, not the later one-line summary)."""
    for message in conversation.get("messages") or []:
        if str(message.get("role", "")).startswith("Model.") and message.get("text"):
            return message["text"]
    return None


def problems() -> list[dict]:
    """All 270 problems: id, category, problem, raw answer, gold forms, answer form, solution, hints."""
    raw = _raw()
    rows = []
    for pid, p in raw["problems"].items():
        hints = [raw["hints"][h]["_text"] for h in p.get("ch_list", []) if h in raw["hints"]]
        golds = gold_answers(p["_answer"])
        rows.append({"id": pid, "category": p["category"], "problem": p["_text"], "raw_answer": p["_answer"],
                     "answer": golds[0] if golds else p["_answer"], "alternatives": golds,
                     "answer_form": answer_form(p["_answer"]),
                     "solution": " ".join(step["_text"] for step in p["solution"]["steps"]), "hints": hints})
    return rows


def transcripts(models: tuple[str, ...] | None = None, settings: tuple[str, ...] | None = None) -> list[dict]:
    """Every model transcript: problem id, model, prompt setting, the model's first answer."""
    out = []
    for pid, p in _raw()["problems"].items():
        for key, conversation in p["conversations"].items():
            model, setting = key.split("|", 1)
            if (models and model not in models) or (settings and setting not in settings):
                continue
            text = first_model_answer(conversation)
            if text:
                out.append({"id": pid, "model": model, "setting": setting, "problem": p["_text"], "text": text})
    return out


def reasoning_texts(n: int | None = None, seed: int = 0, include_solutions: bool = True) -> list[str]:
    """Real reasoning text: model solutions (shuffled, ``n`` of them when given) + reference solutions."""
    texts = [t["text"] for t in transcripts()]
    random.Random(seed).shuffle(texts)
    if n is not None:
        texts = texts[:n]
    if include_solutions:
        texts += [p["solution"] for p in problems()]
    return texts


def plain_texts() -> list[str]:
    """Non-reasoning text about the same mathematics: problem statements, hints, concept statements."""
    raw = _raw()
    return ([p["_text"] for p in raw["problems"].values()] + [h["_text"] for h in raw["hints"].values()]
            + [c["_text"] for c in raw["concepts"].values()])


def chat_texts(tokenizer, n: int = 400, seed: int = 0, with_plain: bool = True) -> list[str]:
    """Problems and model solutions rendered with ``tokenizer``'s chat template (the way a chat model
    reads its own answers), plus plain statements; for SAE training and ReasonScore on a chat model."""
    rows = transcripts()
    random.Random(seed).shuffle(rows)
    texts = []
    for row in rows[:n]:
        messages = [{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": row["text"]}]
        if getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append(row["problem"] + "\n\n" + row["text"])
    if with_plain:
        plain = plain_texts()
        random.Random(seed + 1).shuffle(plain)
        texts += plain[: max(1, n // 4)]
        random.Random(seed + 2).shuffle(texts)
    return texts


# --- answers ----------------------------------------------------------------------------------

_ALTERNATIVE = re.compile(r",\s*or (?:equivalently|an equivalent form such as)\s+")
_APPROX = re.compile(r",\s*or approximately .*$")
_PAREN_NOTE = re.compile(r"\s*\((?:i\.e\.|no |none ).*\)\s*$")
_PHRASES = [re.compile(p) for p in (r"^(.+?) is the only possible value$", r"^The limit exists and is equal to (.+)$",
                                    r"^The only possible value for the limit is (.+)$")]
_MATH = re.compile(r"^[\s\d.+\-*/^()!,=±√\[\]a-z{}\\]*$")
_WORD = re.compile(r"[A-Za-z]{2,}")
_FUNCTIONS = {"sqrt", "floor", "binom", "frac", "lfloor", "rfloor", "sum", "pm"}


def _to_latex(expr: str) -> str:
    expr = expr.strip().replace("±", "\\pm ").replace("−", "-")
    expr = re.sub(r"\bC\(([^(),]+),\s*([^(),]+)\)", r"\\binom{\1}{\2}", expr)
    expr = re.sub(r"sqrt\(([^()]+)\)", r"\\sqrt{\1}", expr)
    expr = re.sub(r"floor\(([^()]+)\)", r"\\lfloor \1 \\rfloor", expr)
    return expr


def gold_answers(raw: str) -> list[str]:
    """The forms of a CHAMP answer a checker should accept (LaTeX-ish), primary form first."""
    text = _APPROX.sub("", raw.strip())
    text = _PAREN_NOTE.sub("", text)
    for pattern in _PHRASES:
        m = pattern.match(text)
        if m:
            text = m.group(1)
    return [_to_latex(part) for part in _ALTERNATIVE.split(text) if part.strip()]


def answer_form(raw: str) -> str:
    """``integer`` | ``fraction`` | ``expression`` (symbolically checkable) or ``text`` (needs a judge)."""
    golds = gold_answers(raw)
    if not golds:
        return "text"
    first = golds[0]
    if re.fullmatch(r"-?\d+", first):
        return "integer"
    if re.fullmatch(r"-?\d+/\d+", first):
        return "fraction"
    words = {w for g in golds for w in _WORD.findall(g)}
    if words - _FUNCTIONS or not all(_MATH.match(g) for g in golds) or " and " in first or "=" in first \
            or ("," in first and not re.fullmatch(r"[\[(][^,]+,[^,]+[\])]", first)) or "..." in first:
        return "text"
    return "expression"


def checkable_problems() -> list[dict]:
    """The problems whose answers a symbolic checker can judge (numbers, fractions, expressions)."""
    return [p for p in problems() if p["answer_form"] != "text"]
