"""The lm-eval task class behind our reasoning benchmarks: scoring and reasoning length per sample.

A plain ``process_results`` function only sees (doc, responses); counting reasoning *tokens* needs
the model's tokenizer, which lm-eval hands to tasks only through ``config.metadata`` (it merges the
run's ``model_args`` — ``pretrained``, ``tokenizer`` — into every task's metadata). So the tasks use
``class: !function utils.ReasoningTask``, a ConfigurableTask that adds, per doc:

- ``exact_match``: mean correctness over the doc's samples (with ``repeats: n`` and our ``KeepAll``
  filter that is pass@1 estimated from n samples; with lm-eval's default ``take_first`` it is 1 sample);
- ``reasoning_tokens``: tokens up to and including the think-end token (the whole generation when the
  think section never closes); ``total_tokens``: tokens of the whole generation; ``think_closed``:
  fraction of samples that closed their think section. Counts re-tokenise the generated text with
  the model's tokenizer (``add_special_tokens=False``), so any tokenizer with a think token works.
  The tokenizer is found as every other entry point finds a model (``reason_plugins.models.load_tokenizer``:
  a registered name such as ``smollm2-135m-instruct``, a folder, a cached hub name); a run whose tokenizer
  cannot be had is refused before any request is built (lengths are never counted in another unit);
- ``extracted_answers`` (bypass): what was extracted, for the samples log.

Task metadata knobs: ``answer_kind`` ("math" | "choice"), ``length_think_end`` (default ``</think>``),
``length_tokenizer`` (default: the model's ``tokenizer`` / ``pretrained``). The reference's
``--gen_kwargs cutoff_token=ID`` (e.g. 128014, R1-Llama's ``</think>``) names the think-end token by
id instead; ``steered_vllm`` keeps it out of vLLM's ``SamplingParams``. An id outside the tokenizer's
vocabulary is refused before any request is built, naming the vocabulary size and the model's own
think-end id (when it has one).
Do not pass lm-eval's ``think_end_token`` model arg: it strips the think section before scoring.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from lm_eval.api.filter import Filter
from lm_eval.api.registry import metric_registry, register_metric
from lm_eval.api.task import ConfigurableTask

from lm_eval_tasks.answers import is_correct

logger = logging.getLogger("reason_plugins.lm_eval")
DEFAULT_THINK_END = "</think>"
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


# Our per-doc values are computed in process_results; registering their names (identity metrics)
# keeps lm-eval from searching the HF `evaluate` hub for them and logging an error per task.
for _name, _better, _agg in (("reasoning_tokens", False, "mean"), ("total_tokens", False, "mean"),
                             ("think_closed", True, "mean"), ("extracted_answers", True, "bypass")):
    if _name not in metric_registry:
        register_metric(metric=_name, higher_is_better=_better, aggregation=_agg)(lambda items: items)


class KeepAll(Filter):
    """Keep every repeat of a doc (lm-eval's default filter keeps only the first)."""

    def apply(self, resps, docs):
        return [list(r) for r in resps]


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    from reason_plugins.models import load_tokenizer as hub_tokenizer

    return hub_tokenizer(name)


def count_tokens(text: str, tokenizer) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reasoning_length(text: str, tokenizer, think_end: str = DEFAULT_THINK_END) -> dict:
    """``{"reasoning_tokens", "total_tokens", "think_closed"}`` of one generation."""
    total = count_tokens(text, tokenizer)
    end = text.find(think_end)
    if end < 0:
        return {"reasoning_tokens": total, "total_tokens": total, "think_closed": 0}
    return {"reasoning_tokens": count_tokens(text[:end + len(think_end)], tokenizer), "total_tokens": total,
            "think_closed": 1}


class LengthUnitError(ValueError):
    """The run cannot count reasoning length in the model's tokens (no tokenizer, or a ``cutoff_token`` that
    is no token of it): refused before any request is built."""


def think_end_note(tokenizer) -> str:
    from reason_plugins.conditions import think_token_ids

    ids = think_token_ids(tokenizer)
    return f"its own think-end token '</think>' is {ids[1]}" if ids else "it has no think tokens (no '</think>' token)"


class ReasoningTask(ConfigurableTask):
    def __init__(self, config: dict | None = None, **kwargs):
        config = dict(config or {})
        config.pop("class", None)  # the factory passes the YAML's `class:` key along
        super().__init__(config=config, **kwargs)

    def _meta(self) -> dict:
        meta = self.config.metadata
        return meta if isinstance(meta, dict) else {}

    def _tokenizer(self):
        """The model's tokenizer (cached); ``LengthUnitError`` when there is none to be had."""
        meta = self._meta()
        name = meta.get("length_tokenizer") or meta.get("tokenizer") or meta.get("pretrained")
        if not name:
            raise LengthUnitError(f"{self.config.task}: reasoning_tokens / total_tokens need the model's tokenizer: give "
                                  "'pretrained' or 'tokenizer' in --model_args, or 'length_tokenizer' in --metadata")
        try:
            return load_tokenizer(str(name))
        except ValueError as exc:
            raise LengthUnitError(f"{self.config.task}: reasoning_tokens / total_tokens are counted in the model's tokens; "
                                  f"{exc}") from None

    def _think_end(self, tokenizer) -> str:
        """The think-end text: ``cutoff_token`` (a token id in generation_kwargs) decoded, else the metadata's."""
        cutoff = (self.config.generation_kwargs or {}).get("cutoff_token")
        if cutoff is None:
            return self._meta().get("length_think_end", DEFAULT_THINK_END)
        try:
            token_id = int(cutoff)
        except (TypeError, ValueError):
            raise LengthUnitError(f"{self.config.task}: cutoff_token must be a token id (an int), got {cutoff!r}") from None
        if not 0 <= token_id < len(tokenizer):
            raise LengthUnitError(f"{self.config.task}: cutoff_token={token_id} is outside the model's vocabulary (size "
                                  f"{len(tokenizer)}; {think_end_note(tokenizer)})")
        return tokenizer.decode([token_id])

    def check_length_unit(self) -> None:
        """The tokenizer and ``cutoff_token`` this task will count lengths with, checked before any work."""
        self._think_end(self._tokenizer())

    def build_all_requests(self, *args, **kwargs):
        try:  # lm-eval builds every task's requests before the model generates anything
            self.check_length_unit()
        except LengthUnitError as exc:
            from lm_eval_tasks.cli_refusals import refuse

            refuse("lm_eval", exc)  # under the stock CLI: one line, exit 2
            raise
        return super().build_all_requests(*args, **kwargs)

    def process_results(self, doc, results):
        responses = results[0] if results and isinstance(results[0], (list, tuple)) else list(results)
        meta = self._meta()
        kind = meta.get("answer_kind", "math")
        gold = str(self.doc_to_target(doc))
        question = self.doc_to_text(doc)
        tokenizer = self._tokenizer()
        think_end = self._think_end(tokenizer)
        correct, extracted, lengths = [], [], []
        for text in responses:
            ok, answer = is_correct(text or "", gold, kind=kind, question=question if isinstance(question, str) else None)
            correct.append(float(ok))
            extracted.append(answer)
            lengths.append(reasoning_length(text or "", tokenizer, think_end))
        n = max(1, len(responses))
        return {
            "exact_match": sum(correct) / n,
            "reasoning_tokens": sum(x["reasoning_tokens"] for x in lengths) / n,
            "total_tokens": sum(x["total_tokens"] for x in lengths) / n,
            "think_closed": sum(x["think_closed"] for x in lengths) / n,
            "extracted_answers": extracted,
        }
