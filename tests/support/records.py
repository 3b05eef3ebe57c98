"""Records with the real schemas of LMSYS-Chat-1M (``conversation`` turns with moderation flags) and
OpenThoughts-114k (``system`` + ``conversations`` with the thought / solution markers), built from the
project's synthetic corpus: the raw input of ``reason-sae data`` without a dataset download."""

from __future__ import annotations

import random

from reason_plugins.corpus import chat_texts, reasoning_examples

OT_SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long "
             "thinking process before providing the final precise and accurate solutions. ... "
             "<|begin_of_thought|> {thought with steps separated with '\\n\\n'} <|end_of_thought|> ...")


def lmsys_records(n: int = 60, seed: int = 0) -> list[dict]:
    rng, lines = random.Random(seed), chat_texts(2 * n, seed)
    return [{
        "conversation_id": f"{i:032x}", "model": rng.choice(["vicuna-13b", "koala-13b"]),
        "conversation": [{"role": "user", "content": lines[2 * i]}, {"role": "assistant", "content": lines[2 * i + 1]}],
        "turn": 1, "language": "English", "openai_moderation": [{"flagged": False}, {"flagged": False}], "redacted": False,
    } for i in range(n)]


def openthoughts_records(n: int = 60, seed: int = 0) -> list[dict]:
    return [{
        "system": OT_SYSTEM,
        "conversations": [
            {"from": "user", "value": f"Return your final response within \\boxed{{}}. {ex['problem']}"},
            {"from": "assistant", "value": f"<|begin_of_thought|>\n\n{ex['thinking']}\n\n<|end_of_thought|>\n\n"
                                           f"<|begin_of_solution|>\n\n{ex['answer']}\n\n<|end_of_solution|>"},
        ],
    } for ex in reasoning_examples(n, seed)]
