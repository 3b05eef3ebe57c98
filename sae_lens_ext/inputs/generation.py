"""The model's own continuations as input (``generate=``: ``reason-sae score --generate N`` and
``reason-sae harvest --generate N``): the sampling options, checked before anything loads, and the room each
row needs in the engine's context (rendered prompt + ``max_tokens`` + 1 to read the row back), checked before
any engine starts. Host-free apart from the tokenizer and config it is handed; shared by ``reason_score`` and
``training`` from this bottom room.
"""

from __future__ import annotations

from reason_plugins.cli_args import check_int

GENERATE_KEYS = ("n", "max_tokens", "temperature", "seed", "chat_template")


def check_generation_room(generate: dict, tokenizer, model_dir: str, engine_options) -> int | None:
    """A row is a prompt (rendered as the engine renders it) and up to ``max_tokens`` generated tokens, read back
    in one more engine pass: it must fit the engine's context length (``max_model_len``, else the model's
    ``max_position_embeddings``). Refused before generating, naming the longest prompt and the numbers; returns
    the longest row's length (None when the model states no limit)."""
    limit = (engine_options or {}).get("max_model_len")
    if limit is None:
        from reason_plugins.models import load_config

        cfg = load_config(model_dir)
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return None
    lengths = []
    for prompt in generate["prompts"]:
        text = prompt
        if generate.get("chat_template", True) and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        lengths.append(len(tokenizer(text)["input_ids"]))  # as the engine tokenizes a text prompt
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    need = lengths[worst] + int(generate["max_tokens"]) + 1
    if need > int(limit):
        room = int(limit) - lengths[worst] - 1
        fix = f"lower --max-tokens to {room} or raise" if room >= 1 else "shorten the prompt or raise"
        raise ValueError(f"generate: prompt {worst} renders to {lengths[worst]} tokens; with max_tokens={generate['max_tokens']} its row "
                         f"needs {need} tokens (one more to read it back), beyond the engine's context length {limit} "
                         f"(max_model_len): {fix} --max-model-len")
    return need


def check_generate(generate, engine, tokens):
    """``generate={"prompts", "n", "max_tokens", "temperature", "seed", "chat_template"}``, checked before any
    loading; the rows are then the model's own continuations, so there are no ``tokens`` to give."""
    import math

    if generate is None:
        if tokens is None:
            raise ValueError("no data to score: give token rows or a dataset, or generate= prompts (with an engine)")
        return None
    if engine in (None, "hf"):
        raise ValueError("generate= needs an activation engine (engine='vllm'): the HF path scores given rows only")
    if tokens is not None:
        raise ValueError("generate= writes the rows itself: give prompts, not tokens/data too")
    if not isinstance(generate, dict):
        raise ValueError(f"generate must be a dict of prompts, n, max_tokens, temperature, seed; got {generate!r}")
    prompts = generate.get("prompts")
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"generate['prompts'] must be a non-empty list of non-empty texts, got {prompts!r}")
    unknown = set(generate) - {"prompts", *GENERATE_KEYS}
    if unknown:
        raise ValueError(f"generate: unknown option(s) {sorted(unknown)}")
    g = {"prompts": list(prompts), "n": generate.get("n", 1), "max_tokens": generate.get("max_tokens", 256),
         "temperature": generate.get("temperature", 0.6), "seed": generate.get("seed", 0),
         "chat_template": bool(generate.get("chat_template", True))}
    for name, low in (("n", 1), ("max_tokens", 1), ("seed", 0)):
        check_int(f"generate['{name}']", g[name], low)
    t = g["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"generate['temperature']={t!r} is invalid (expected a finite number >= 0)")
    return g
