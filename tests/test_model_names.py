"""One resolver for model names: a registered name (``smollm2-135m-instruct``) and its converted folder give
the same lm-eval numbers (``reasoning_tokens`` in the model's tokens, never whitespace words); a run whose
tokenizer cannot be had, or whose ``cutoff_token`` is no token of the model, is refused before anything is
generated; ``reason-sae data --tokenizer NAME`` and the hub's ``load_tokenizer`` resolve the same way.

The lm-eval runs are lm-eval's own ``simple_evaluate`` over the shipped ``tiny_arith`` task, with the task
metadata lm-eval builds from ``--model_args`` (``pretrained=...``) and a scripted model that answers every
request with fixed reasoning text and counts its calls (no engine: the lengths are the task's, from text).
The real model's converted folder is cached (converted once, ~1 min, like ``test_real_model``)."""

from __future__ import annotations

import pytest

NAME = "smollm2-135m-instruct"
ANSWER = ("Hmm, let me think step by step. First, 7 plus 5 makes twelve; wait, maybe I should double-check... "
          "Therefore the answer is \\boxed{12}.")

pytestmark = pytest.mark.slow  # the real model's folder (converted on first use)


@pytest.fixture(scope="module")
def real_dir():
    from reason_plugins.models import resolve_model

    return resolve_model(NAME)


class ScriptedLM:
    """An lm-eval model answering every generation request with ``ANSWER`` (built lazily: lm-eval's LM base)."""

    @staticmethod
    def make():
        from lm_eval.api.model import LM

        class _Scripted(LM):
            def __init__(self):
                super().__init__()
                self.calls = 0

            def generate_until(self, requests, disable_tqdm: bool = False):
                self.calls += len(requests)
                return [ANSWER for _ in requests]

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

        return _Scripted()


def _run(pretrained: str, gen_kwargs: str | None = None, lm=None):
    """``lm_eval --model ... --model_args pretrained=<pretrained> --tasks tiny_arith --limit 3`` in-process: the
    task metadata holds ``pretrained`` as lm-eval's CLI merges it from ``--model_args``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_DIR

    lm = lm or ScriptedLM.make()
    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"pretrained": pretrained})
    results = lm_eval.simple_evaluate(model=lm, tasks=["tiny_arith"], task_manager=tm, limit=3, gen_kwargs=gen_kwargs,
                                      log_samples=False)
    return lm, results["results"]["tiny_arith"]


def test_a_registered_name_and_its_folder_give_the_same_lm_eval_numbers_in_tokens(real_dir):
    from transformers import AutoTokenizer

    by_name_lm, by_name = _run(NAME)
    by_folder_lm, by_folder = _run(str(real_dir))
    assert by_name_lm.calls == by_folder_lm.calls == 3
    keys = ("reasoning_tokens,all_samples", "total_tokens,all_samples", "think_closed,all_samples", "exact_match,all_samples")
    assert {k: by_name[k] for k in keys} == {k: by_folder[k] for k in keys}
    tokens = len(AutoTokenizer.from_pretrained(real_dir)(ANSWER, add_special_tokens=False)["input_ids"])
    assert tokens != len(ANSWER.split())  # so a run counting words instead could not pass
    assert by_name["reasoning_tokens,all_samples"] == by_name["total_tokens,all_samples"] == tokens  # no think section: all of it


def test_no_tokenizer_is_refused_before_anything_is_generated(tmp_path):
    from lm_eval_tasks.task_base import LengthUnitError

    missing = tmp_path / "no-model-here"
    missing.mkdir()
    lm = ScriptedLM.make()
    with pytest.raises(LengthUnitError, match=r"tiny_arith: reasoning_tokens / total_tokens are counted in the model's tokens.*"
                                              r"registered names \['smollm2-135m-instruct'\]"):
        _run(str(missing), lm=lm)
    assert lm.calls == 0


def test_a_cutoff_token_outside_the_vocabulary_is_refused_before_generating(real_dir):
    """The README's R1-Llama id (128014) given to SmolLM2 (49,152 tokens, no think tokens)."""
    from lm_eval_tasks.task_base import LengthUnitError

    lm = ScriptedLM.make()
    with pytest.raises(LengthUnitError, match=r"cutoff_token=128014 is outside the model's vocabulary \(size 49152; it has no "
                                              r"think tokens"):
        _run(NAME, gen_kwargs="cutoff_token=128014", lm=lm)
    assert lm.calls == 0


def test_hub_tokenizer_and_reason_sae_data_resolve_registered_names(real_dir, tmp_path, capsys):
    import json

    from reason_plugins.app.cli import main
    from reason_plugins.models import ModelNotFoundError, load_config, load_tokenizer

    assert load_tokenizer(NAME).name_or_path == str(real_dir)
    assert load_config(NAME).hidden_size == 576
    with pytest.raises(ModelNotFoundError, match="cannot load the tokenizer of 'no-such-org/no-such-model'"):
        load_tokenizer("no-such-org/no-such-model")
    rows = tmp_path / "openthoughts.jsonl"
    rows.write_text("".join(json.dumps({"system": "", "conversations": [
        {"from": "user", "value": f"What is {i} + {i}?"},
        {"from": "assistant", "value": f"<|begin_of_thought|>Wait, {i} + {i} = {2 * i}.<|end_of_thought|>"
                                       f"<|begin_of_solution|>{2 * i}<|end_of_solution|>"}]}) + "\n" for i in range(40)))
    assert main(["data", "--tokenizer", NAME, "--out", str(tmp_path / "data"), "--openthoughts", str(rows),
                 "--context-size", "32"]) == 0
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["tokenizer"] in (NAME, str(real_dir))
    assert main(["data", "--tokenizer", "no-such-org/no-such-model", "--out", str(tmp_path / "d2"), "--openthoughts", str(rows)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "reason-sae data: error: cannot load the tokenizer of 'no-such-org/no-such-model'")
