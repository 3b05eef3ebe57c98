"""SAE training recipes registered by name, turned into SAELens's own runner config.

A recipe is a plain dict: ``LanguageModelSAERunnerConfig`` fields and SAELens ``LoggingConfig``
fields at the top level, the SAE's own fields under ``"sae"`` (``architecture``, ``d_in``,
``expansion_factor`` or ``d_sae``, then any field of that architecture's training config), plus
one key of ours, ``model_path`` (a local model snapshot to load instead of the hub).

The paper's recipe (``r1-distill-llama-8b``): standard ReLU SAE on ``blocks.19.hook_resid_post``,
d_in 4096 x16, L1 5 on decoder-norm-scaled activations (SAELens's standard SAE always scales by
the decoder norm), lr 5e-5 constant with a 20% decay tail, Adam 0.9/0.999, 819.2M tokens in
batches of 4096 (200k steps), context 1024, ``expected_average_only_in`` normalisation, special
tokens (BOS/EOS/PAD) excluded, seed 42. The Qwen recipes are the same recipe scaled to their
width, at the same relative depth: layer 19 of Llama-8B's 32 is 19/32 of the stack, so a 28-layer
Qwen uses round(19 * 28 / 32) = 17 (``paper_layer``). The ``-topk`` variants swap the L1 penalty
for TopK with k = 32 (sparsify's default, the k-SAE study's setting), all else equal.
"""

from __future__ import annotations

import copy
import dataclasses
import json

from reason_plugins.hookspecs import hookimpl

PAPER_LAYER, PAPER_N_LAYERS = 19, 32
TOPK_K = 32
EXTRA_KEYS = {"model_path"}  # ours, not SAELens's


def paper_layer(n_layers: int) -> int:
    """The layer at the paper's relative depth (19 of 32), rounded half up."""
    return int(PAPER_LAYER * n_layers / PAPER_N_LAYERS + 0.5)


# The paper's runner settings (reference training YAML), shared by every DeepSeek recipe.
_PAPER_RUNNER = {
    "model_class_name": "HookedTransformer",
    "model_from_pretrained_kwargs": {"center_writing_weights": False, "dtype": "bfloat16"},
    "is_dataset_tokenized": True, "streaming": False, "prepend_bos": False, "context_size": 1024,
    "training_tokens": 819_200_000, "train_batch_size_tokens": 4096,
    "lr": 5e-5, "adam_beta1": 0.9, "adam_beta2": 0.999, "lr_scheduler_name": "constant",
    "lr_warm_up_steps": 0, "lr_decay_steps": 40_000,  # 20% of the 200k steps
    "n_batches_in_buffer": 32, "store_batch_size_prompts": 8,
    "feature_sampling_window": 1000, "dead_feature_window": 1000, "dead_feature_threshold": 1e-4,
    "exclude_special_tokens": True,  # the paper excluded BOS/EOS ([128000, 128001] for Llama-8B)
    "seed": 42, "dtype": "float32", "device": "cuda",
    "n_checkpoints": 5, "checkpoint_path": "sae_runs", "output_path": "sae_out",
    "log_to_wandb": False, "wandb_project": "sae-lmsys-openthoughts", "wandb_log_frequency": 30,
    "eval_every_n_wandb_logs": 20,
}
_PAPER_SAE = {
    "architecture": "standard", "expansion_factor": 16, "l1_coefficient": 5.0,
    "l1_warm_up_steps": 10_000,  # 5% of training
    "lp_norm": 1.0, "apply_b_dec_to_input": False, "normalize_activations": "expected_average_only_in",
    "decoder_init_norm": 0.1,  # the reference's decoder_heuristic_init
}

# name -> (HF model, d_model, n_layers, tokenised training set the paper published, if any)
_MODELS = {
    "r1-distill-llama-8b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 4096, 32,
                            "andreuka18/DeepSeek-R1-Distill-Llama-8B-lmsys-openthoughts-tokenized"),
    "r1-distill-qwen-1.5b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1536, 28, None),
    "r1-distill-qwen-7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 3584, 28, None),
}


def _recipe(model: str, d_model: int, n_layers: int, dataset: str | None, topk: bool) -> dict:
    layer = paper_layer(n_layers)
    sae = dict(_PAPER_SAE, d_in=d_model)
    if topk:
        for key in ("l1_coefficient", "l1_warm_up_steps", "lp_norm"):
            sae.pop(key)
        sae.update(architecture="topk", k=TOPK_K)
    short = model.split("/")[-1].lower()
    return dict(
        copy.deepcopy(_PAPER_RUNNER), model_name=model, hook_name=f"blocks.{layer}.hook_resid_post",
        # no published set for the Qwens: build one with `reason-sae data` and override dataset_path
        dataset_path=dataset or f"{short}-lmsys-openthoughts-tokenized",
        run_name=f"{short}-L{layer}-{'topk' if topk else 'l1'}", sae=sae,
    )


# For the offline fixtures (4 layers, d_model 128): seconds on a CPU, a few hundred steps.
TINY = {
    "model_name": "tiny-fixture", "model_class_name": "TransformerBridge", "model_path": None,
    "hook_name": "blocks.2.hook_resid_post", "dataset_path": None,
    "is_dataset_tokenized": True, "streaming": False, "prepend_bos": True, "context_size": 128,
    "training_tokens": 300 * 128, "train_batch_size_tokens": 128, "lr": 3e-3, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "lr_scheduler_name": "constant", "n_batches_in_buffer": 8, "store_batch_size_prompts": 8,
    "n_batches_for_norm_estimate": 5, "exclude_special_tokens": True, "seed": 42, "dtype": "float32",
    "device": "cpu", "n_checkpoints": 0, "checkpoint_path": None, "output_path": "sae_out",
    "log_to_wandb": False, "verbose": False,
    "sae": {"architecture": "standard", "d_in": 128, "expansion_factor": 4, "l1_coefficient": 0.2,
            "apply_b_dec_to_input": False, "normalize_activations": "expected_average_only_in"},
}

# The real packaged model (reason_plugins.models): SmolLM2-135M-Instruct, 30 layers, d_model 576.
# The paper's architecture and objective (standard ReLU SAE, L1 on decoder-norm-scaled activations,
# expected_average_only_in, special tokens excluded) at the paper's relative depth (layer 18 of 30),
# trained on CHAMP's real transcripts (``dataset_path="champ"``: chat-formatted problems + model
# solutions and plain statements, tokenised with the model's own tokenizer, built offline).
# ``smollm2-135m-instruct`` is the full-width recipe (x16, 50M tokens); ``-demo`` is the demo's
# CPU-minutes version (x4, short run, higher lr).
SMOLLM2 = dict(
    copy.deepcopy(_PAPER_RUNNER), model_name="smollm2-135m-instruct", model_class_name="TransformerBridge",
    model_from_pretrained_kwargs={}, model_path=None, hook_name=f"blocks.{paper_layer(30)}.hook_resid_post",
    dataset_path="champ", context_size=256, prepend_bos=True, training_tokens=50_000_000, train_batch_size_tokens=4096,
    lr=5e-5, lr_decay_steps=2_440, n_batches_in_buffer=16, device="cpu", run_name="smollm2-135m-instruct-L18-l1",
    wandb_project="sae-smollm2-champ", sae=dict(_PAPER_SAE, d_in=576, l1_warm_up_steps=600),
)
SMOLLM2_DEMO = dict(
    copy.deepcopy(SMOLLM2), training_tokens=120_000, train_batch_size_tokens=512, lr=1e-3, lr_decay_steps=0,
    n_batches_in_buffer=8, store_batch_size_prompts=4, n_batches_for_norm_estimate=5, n_checkpoints=0, checkpoint_path=None,
    feature_sampling_window=200, dead_feature_window=200, run_name="smollm2-135m-instruct-L18-l1-demo",
    sae=dict(_PAPER_SAE, d_in=576, expansion_factor=4, l1_coefficient=2.0, l1_warm_up_steps=20),
)

TRAINING_CONFIGS = {"tiny": TINY, "smollm2-135m-instruct": SMOLLM2, "smollm2-135m-instruct-demo": SMOLLM2_DEMO}
for _name, (_model, _d, _n, _ds) in _MODELS.items():
    TRAINING_CONFIGS[_name] = _recipe(_model, _d, _n, _ds, topk=False)
    TRAINING_CONFIGS[f"{_name}-topk"] = _recipe(_model, _d, _n, _ds, topk=True)


@hookimpl
def reason_training_configs() -> dict:
    return copy.deepcopy(TRAINING_CONFIGS)


def get_config(name: str) -> dict:
    """A registered recipe (from any plugin) by name, as a fresh copy."""
    from reason_plugins.manager import get

    return copy.deepcopy(get("training_config", name))


# --- overrides and the SAELens runner config -------------------------------------------------

def _runner_fields() -> set[str]:
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    return ({f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig)} - {"sae", "logger"}) \
        | {f.name for f in dataclasses.fields(LoggingConfig)} | EXTRA_KEYS


def _sae_fields(architecture: str) -> set[str]:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(f"unknown SAE architecture {architecture!r}; expected one of {sorted(SAE_TRAINING_CLASS_REGISTRY)}")
    config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    return {f.name for f in dataclasses.fields(config_class)} | {"architecture", "expansion_factor"}


def parse_value(text: str):
    """``key=value`` values: JSON when it parses (numbers, true/false/null, lists, dicts), else the
    string itself (paths, names); ``none`` is None too."""
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: dict, overrides: list[str] | dict) -> dict:
    """A copy of ``config`` with ``key=value`` overrides applied. ``sae.KEY`` sets an SAE field;
    a bare key goes to the runner if it is a runner field, else to the SAE. Unknown keys raise."""
    config = copy.deepcopy(config)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        value = parse_value(value) if isinstance(value, str) else value
        architecture = value if key in ("architecture", "sae.architecture") else config["sae"]["architecture"]
        runner, sae = _runner_fields(), _sae_fields(architecture)
        if key.startswith("sae."):
            field, target = key[4:], config["sae"]
            if field not in sae:
                raise ValueError(f"bad override key {key!r}: {architecture!r} SAEs have no field {field!r}; "
                                 f"SAE fields: {sorted(sae)}")
        elif key in runner:
            field, target = key, config
        elif key in sae:
            field, target = key, config["sae"]
        else:
            raise ValueError(f"bad override key {key!r}: not a SAELens runner/logging field nor a {architecture!r} "
                             f"SAE field; runner fields: {sorted(runner)}; SAE fields (or sae.KEY): {sorted(sae)}")
        target[field] = value
        if field == "d_sae":
            target.pop("expansion_factor", None)
        elif field == "expansion_factor":
            target.pop("d_sae", None)
    return config


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ValueError(f"bad override {override!r}: expected key=value")
    key, value = override.split("=", 1)
    return key.strip(), value.strip()


def build_runner_config(config: dict):
    """SAELens's ``LanguageModelSAERunnerConfig`` for a recipe (all keys checked)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    config = copy.deepcopy(config)
    sae = dict(config.pop("sae"))
    architecture = sae.pop("architecture")
    sae_fields = _sae_fields(architecture)
    bad = sorted(set(sae) - sae_fields)
    if bad:
        raise ValueError(f"SAE keys {bad} are not fields of {architecture!r} SAEs; expected some of {sorted(sae_fields)}")
    if "d_sae" not in sae:
        sae["d_sae"] = sae["d_in"] * sae.pop("expansion_factor")
    sae.pop("expansion_factor", None)
    sae_config = SAE_TRAINING_CLASS_REGISTRY[architecture][1](**sae)

    logging_fields = {f.name for f in dataclasses.fields(LoggingConfig)}
    logger = LoggingConfig(**{k: config.pop(k) for k in list(config) if k in logging_fields})
    for key in EXTRA_KEYS:
        config.pop(key, None)
    bad = sorted(set(config) - _runner_fields())
    if bad:
        raise ValueError(f"keys {bad} are not SAELens runner fields")
    if config.get("dataset_path") is None:
        config["dataset_path"] = ""
    return LanguageModelSAERunnerConfig(sae=sae_config, logger=logger, **config)
