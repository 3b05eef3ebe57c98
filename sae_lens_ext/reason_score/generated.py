"""A ReasonScore run over the model's own continuations (``generate=``, ``reason-sae score --generate N``): the
rows themselves (the options and the room a row needs in the engine's context are checked by
``inputs.generation``, shared with the on-policy harvest).

A generated run scores the model's tokens only: each continuation is one row, the prompt's token ids then the
generated ones exactly as the engine saw them (no re-tokenised text, no packing across continuations), right-padded
to the longest, with a ``scored`` mask that is 1 on the generated tokens. The prompt stays in context (the model
reads it, so the generated positions' activations are the ones the engine computed) but is in no token set, as
the padding is. Host-free apart from the tokenizer and config it is handed.
"""

from __future__ import annotations

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
