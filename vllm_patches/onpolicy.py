"""The vLLM engine as an activation engine for analyses that score features from what the engine saw
(``reason_activation_engines``: ``"vllm"``): ReasonScore over given token rows in one prefill pass,
or over the model's own generations.

``VllmSession.feature_sums`` sends each token row as a prompt (one token generated, so only the
prefill runs) with a ``sums`` readout: the op encodes every row that asked with SAELens's own
``encode`` and adds the float64 sums of all d_sae features over the positions each mask bit marks
into one accumulator per job, inside the engine; the caller fetches the job's sums once
(``reason_steering_sums``). Nothing per token leaves the engine, so the memory stays flat in the
number of tokens. ``generate`` samples continuations of prompts. Importing this module is cheap
(it is an entry point of the plugin manager): vLLM is imported when a session opens.
"""

from __future__ import annotations

import uuid

from reason_plugins.hookspecs import hookimpl


class VllmSession:
    """One engine with one SAE at one hook (readout on), for feature sums and generation."""

    def __init__(self, model, sae, sae_id=None, hook=None, *, tensor_parallel_size: int = 1, dtype: str = "float32",
                 max_model_len: int | None = None, enforce_eager: bool | None = None, max_num_seqs: int | None = None,
                 raw_hooks: list[str] | None = None, cut_at: int | None = None, **llm_kwargs):
        import torch

        from vllm_patches.llm import SteeredLLM

        if cut_at is not None:  # only layers 0..cut_at are loaded and run (prefill-only reads up to there)
            from reason_plugins.models import resolve_model
            from vllm_patches.cut_model import cut_model

            model = cut_model(resolve_model(str(model)), int(cut_at))

        if sae is None:  # a harvest: raw readout at raw_hooks, no SAE
            self.sae, self.sae_id, self.hook = None, None, None
            saes = []
        elif hook is None:
            from reason_plugins.saes import sae_hook

            hook = sae_hook(str(sae), sae_id)
        if sae is not None:
            self.sae, self.sae_id, self.hook = str(sae), sae_id, hook
            saes = [{"sae": self.sae, "sae_id": sae_id, "hook": hook}]
        if enforce_eager is None:  # sums run eagerly: an engine replaying CUDA graphs would refuse them
            enforce_eager = torch.cuda.is_available()
        kwargs = dict(dtype=dtype, seed=0, tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, **llm_kwargs)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if raw_hooks:
            kwargs["raw_hooks"] = list(raw_hooks)
            enforce_eager = kwargs["enforce_eager"] = True  # raw rows are read eagerly
        self.llm = SteeredLLM(str(model), saes=saes, **kwargs)

    def raw_rows(self, rows, hooks, steering=None) -> dict:
        """The residual rows of ``rows`` (token id lists) at ``hooks``: ``{hook: [float32 [T, d] per row]}``,
        one prefill pass (one token generated), read by the engine's raw readout."""
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": [int(t) for t in row]} for row in rows]
        readout = [{"hook": h, "raw": True, "positions": "prompt"} for h in hooks]
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0), steering=steering,
                                 readout=readout, use_tqdm=False)
        got = self.llm.readout(outs)
        result = {h: [] for h in hooks}
        for row, read in zip(rows, got):
            read = read if len(hooks) > 1 else {hooks[0]: read}
            for h in hooks:
                r = read[h]
                if r["missing_positions"] or len(r["positions"]) != len(row):
                    raise RuntimeError(f"the engine read {len(r['positions'])} of {len(row)} prompt rows at {h} "
                                       f"(missing {r['missing_positions'][:5]})")
                result[h].append(r["raw"])
        return result

    def feature_sums(self, rows, masks, bits: int, steering=None):
        """float64 sums [bits, d_sae] of every feature at the hook over the positions of ``rows`` (token
        id lists) whose bit b is set in ``masks`` (one int per position), and the counts per bit."""
        from vllm import SamplingParams

        from vllm_patches.engine.readout import unpack

        job = uuid.uuid4().hex
        prompts = [{"prompt_token_ids": [int(t) for t in row]} for row in rows]
        readout = tuple({"sae": self.sae, "sae_id": self.sae_id, "hook": self.hook, "positions": "prompt",
                         "sums": {"job": job, "bits": int(bits), "masks": [int(m) for m in mask]}} for mask in masks)
        self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0), steering=steering, readout=readout, use_tqdm=False)
        found = unpack(self.llm.llm.collective_rpc("reason_steering_sums", kwargs={"job": job})[0]).get(self.hook)
        if found is None:
            raise RuntimeError(f"the engine returned no feature sums for job {job} at {self.hook}")
        return found["sums"], found["counts"]

    def generate(self, prompts, *, n: int = 1, max_tokens: int = 256, temperature: float = 0.6, seed: int = 0,
                 chat_template: bool = True, steering=None) -> list[list[dict]]:
        """``n`` continuations of each prompt (text, rendered with the chat template unless told not to):
        per prompt, per choice ``{"prompt_token_ids", "token_ids", "text"}`` (``text``: prompt + output)."""
        from vllm import SamplingParams

        texts = self.llm.chat_prompts(list(prompts)) if chat_template else list(prompts)
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, seed=seed)
        outputs = self.llm.generate(texts, params, steering=steering, use_tqdm=False)
        return [[{"prompt_token_ids": list(out.prompt_token_ids), "token_ids": list(c.token_ids), "text": text + c.text}
                 for c in sorted(out.outputs, key=lambda c: c.index)] for text, out in zip(texts, outputs)]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


@hookimpl
def reason_activation_engines():
    return {"vllm": VllmSession}
