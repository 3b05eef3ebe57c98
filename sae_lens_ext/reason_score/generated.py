"""A ReasonScore run over the model's own continuations (``generate=``, ``reason-sae score --generate N``): the
options checked before any loading, the room a row needs in the engine's context (checked before generating),
and the rows themselves.

A generated run scores the model's tokens only: each continuation is one row, the prompt's token ids then the
generated ones exactly as the engine saw them (no re-tokenised text, no packing across continuations), right-padded
to the longest, with a ``scored`` mask that is 1 on the generated tokens. The prompt stays in context (the model
reads it, so the generated positions' activations are the ones the engine computed) but is in no token set, as
the padding is. Host-free apart from the tokenizer and config it is handed.
"""

from __future__ import annotations

from reason_plugins.cli_args import check_int

SCORED_POSITIONS = "output"  # a generated run scores the continuation's tokens; its prompt is context only


def generated_rows(transcripts: list[dict], tokenizer) -> dict:
    """The rows of a generated run, one per continuation, as the engine saw them: prompt token ids then the
    generated ones, right-padded to the longest; ``scored`` is 1 on the generated tokens only (the prompt
    stays in context, masked out of every token set, as the padding is)."""
    from sae_lens_ext.inputs.token_data import SCORED_COLUMN

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(t["prompt_token_ids"]) + len(t["token_ids"]) for t in transcripts)
    tokens, scored = [], []
    for t in transcripts:
        row = [int(i) for i in t["prompt_token_ids"]] + [int(i) for i in t["token_ids"]]
        tokens.append(row + [int(pad)] * (width - len(row)))
        scored.append([0] * len(t["prompt_token_ids"]) + [1] * len(t["token_ids"]) + [0] * (width - len(row)))
    return {"tokens": tokens, SCORED_COLUMN: scored}


def check_generation_room(generate: dict, tokenizer, model_dir: str, engine_options) -> None:
    """A row is a prompt (rendered as the engine renders it) and up to ``max_tokens`` generated tokens, read back
    in one more engine pass: it must fit the engine's context length (``max_model_len``, else the model's
    ``max_position_embeddings``). Refused before generating, naming the longest prompt and the numbers."""
    limit = (engine_options or {}).get("max_model_len")
    if limit is None:
        from reason_plugins.models import load_config

        cfg = load_config(model_dir)
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return
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
    unknown = set(generate) - {"prompts", "n", "max_tokens", "temperature", "seed", "chat_template"}
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
