"""The on-policy harvest's own pieces (``harvest(..., generate=...)``, ``reason-sae harvest --generate N --prompts FILE``):
the model's continuations of prompts, written by the engine (under the steering spec, if one is given), then read
back at every hook with the raw readout (under the same spec), only the generated positions kept.

Each continuation's row is what the engine saw: the rendered prompt's token ids, then the generated ones. That row
is read in one prefill pass, so every generated position's activation is computed in its true context (its prompt
and the tokens generated before it); the prompt positions are context only and are dropped. The generated positions
of all continuations, in order (prompt by prompt, choice by choice), are packed ``context_size`` per cache row, with
``token_ids`` the generated ids at those positions; the tail that does not fill a row is dropped (``harvest.json``
records how many tokens). The transcripts go to ``OUT/transcripts.jsonl`` with the job's id, so a stopped run
resumes without generating again. ``harvest.py`` drives these; this module imports nothing of it.
"""

from __future__ import annotations

import json
from pathlib import Path

TRANSCRIPTS = "transcripts.jsonl"
POSITION_CONDITIONS = ("from_token", "to_token", "only_in", "decode_only")


def check_steering(steering) -> None:
    """A spec whose edits depend on which tokens are generated (a window, the think section, decode only) would
    apply while generating but not where the row is read back (as a prompt): refused, naming the field."""
    for spec in [] if steering is None else steering if isinstance(steering, (list, tuple)) else [steering]:
        spec = spec if isinstance(spec, dict) else spec.to_dict()
        used = [k for k in POSITION_CONDITIONS if spec.get(k) not in (None, False)]
        if used:
            raise ValueError(f"--steer with {', '.join(used)} depends on which tokens are generated, but a --generate harvest "
                             f"reads each row back as a prompt: give a spec without {'/'.join(POSITION_CONDITIONS)} "
                             f"(a feature gate, 'when', is fine)")


def transcribe(session, generate: dict, steering, out: Path, job: str) -> list[dict]:
    """The continuations of ``generate["prompts"]`` (``session.generate``, under ``steering``): read back from
    ``out/transcripts.jsonl`` when this job wrote them, else generated and written there."""
    from reason_plugins.files import write_text_atomic

    path = Path(out) / TRANSCRIPTS
    if path.is_file():
        saved = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if saved and all(t.get("job") == job for t in saved):
            return saved
    g = generate
    got = session.generate(g["prompts"], n=g["n"], max_tokens=g["max_tokens"], temperature=g["temperature"], seed=g["seed"],
                           chat_template=g["chat_template"], steering=steering)
    saved = [{"job": job, "prompt_index": i, "choice": c, "prompt": g["prompts"][i], "text": row["text"],
              "prompt_token_ids": [int(t) for t in row["prompt_token_ids"]], "token_ids": [int(t) for t in row["token_ids"]]}
             for i, choices in enumerate(got) for c, row in enumerate(choices)]
    write_text_atomic(path, "".join(json.dumps(t) + "\n" for t in saved))
    return saved


def packing(transcripts: list[dict], context_size: int) -> dict:
    """How the generated tokens fill cache rows: their count, the whole rows and the tail dropped."""
    n = sum(len(t["token_ids"]) for t in transcripts)
    return {"generated_tokens": n, "rows": n // context_size, "dropped_tokens": n % context_size,
            "continuations": len(transcripts)}


def packed_rows(transcripts: list[dict], read, hooks: list[str], context_size: int, skip_rows: int = 0, batch_size: int = 8):
    """Yield ``(token_ids [n, context_size], {hook: [n, context_size, d]})``: the generated positions of the
    transcripts in order, ``context_size`` per row, after the first ``skip_rows`` rows (a resumed run), the tail
    dropped. ``read(rows) -> {hook: [[T, d] per row]}`` reads whole rows (prompt + generated ids); a transcript
    whose positions all lie in skipped rows or in the dropped tail is not read."""
    import torch

    start, stop = skip_rows * context_size, packing(transcripts, context_size)["rows"] * context_size
    spans, at = [], 0  # (transcript, the slice of its generated positions kept)
    for t in transcripts:
        n = len(t["token_ids"])
        lo, hi = max(start - at, 0), min(stop - at, n)
        if lo < hi:
            spans.append((t, lo, hi))
        at += n
    ids_buf, acts_buf = [], {h: [] for h in hooks}

    def full_rows():
        ids = torch.cat(ids_buf)
        k = len(ids) // context_size * context_size
        acts = {h: torch.cat(acts_buf[h]) for h in hooks}
        ids_buf[:] = [ids[k:]] if k < len(ids) else []
        for h in hooks:
            acts_buf[h] = [acts[h][k:]] if k < len(ids) else []
        return ids[:k].view(-1, context_size), {h: acts[h][:k].view(-1, context_size, acts[h].shape[-1]) for h in hooks}

    for b in range(0, len(spans), batch_size):
        chunk = spans[b:b + batch_size]
        got = read([t["prompt_token_ids"] + t["token_ids"] for t, _, _ in chunk])
        for j, (t, lo, hi) in enumerate(chunk):
            p = len(t["prompt_token_ids"])
            ids_buf.append(torch.tensor(t["token_ids"][lo:hi], dtype=torch.long))
            for h in hooks:
                acts_buf[h].append(torch.as_tensor(got[h][j])[p + lo:p + hi])
        if sum(len(x) for x in ids_buf) >= context_size:
            yield full_rows()
