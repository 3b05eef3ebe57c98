"""Reasoning vocabularies: the paper's word list, user lists, and the grouping rule ReasonScore uses.

A vocabulary is a list of strings; strings are grouped by ``lstrip().lower()`` so " Wait" and
"wait" count as one group. Registered through the ``reason_vocabularies`` hook so other packages
can add their own by name.
"""

from __future__ import annotations

from pathlib import Path

from reason_plugins.files import read_json
from reason_plugins.hookspecs import hookimpl

# The paper's eight words, each in the four forms "x", " x", "X", " X", plus two capitalised extras.
PAPER_WORDS = ("alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however")
PAPER_EXTRAS = ("But", "Another")


def paper_vocabulary() -> list[str]:
    strings = []
    for word in PAPER_WORDS:
        capital = word[0].upper() + word[1:]
        strings += [word, " " + word, capital, " " + capital]
    return strings + list(PAPER_EXTRAS)


@hookimpl
def reason_vocabularies() -> dict:
    return {"paper": paper_vocabulary()}


def group_strings(strings: list[str]) -> dict[str, list[str]]:
    """Group strings by ``lstrip().lower()``, keeping first-seen order of groups and strings."""
    groups: dict[str, list[str]] = {}
    for s in strings:
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"vocabulary entries must be non-blank strings, got {s!r}")
        groups.setdefault(s.lstrip().lower(), [])
        if s not in groups[s.lstrip().lower()]:
            groups[s.lstrip().lower()].append(s)
    return groups


def resolve_vocabulary(vocabulary) -> dict[str, list[str]]:
    """Turn a vocabulary argument into ``{group: [strings]}``.

    Accepts a registered name ("paper"), a path to a JSON file holding a list of strings (or a
    ``{group: [strings]}`` mapping), a list of strings, or such a mapping.
    """
    if isinstance(vocabulary, (str, Path)) and Path(vocabulary).suffix == ".json":
        path = Path(vocabulary)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
        vocabulary = read_json(path, "vocabulary file")
    elif isinstance(vocabulary, str):
        from reason_plugins.manager import get

        vocabulary = get("vocabulary", vocabulary)
    if isinstance(vocabulary, dict):
        if not vocabulary or not all(isinstance(v, list) and v for v in vocabulary.values()):
            raise ValueError("a vocabulary mapping must be {group: [non-empty list of strings]}")
        return {str(g): list(v) for g, v in vocabulary.items()}
    if isinstance(vocabulary, (list, tuple)) and vocabulary:
        return group_strings(list(vocabulary))
    raise ValueError(
        f"vocabulary must be a registered name, a .json path, a non-empty list of strings or a "
        f"{{group: [strings]}} mapping; got {vocabulary!r}"
    )


def count_reasoning_words(text: str, vocabulary="paper") -> dict[str, int]:
    """How often each vocabulary group occurs in ``text`` as a whole word (case-insensitive);
    a quick, tokenizer-free measure for comparing generations."""
    import re

    counts = {}
    for group in resolve_vocabulary(vocabulary):
        counts[group] = len(re.findall(r"(?<![A-Za-z])" + re.escape(group) + r"(?![A-Za-z])", text, flags=re.IGNORECASE))
    return counts
