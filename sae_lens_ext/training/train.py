"""SAE training through SAELens's own runner (no training loop of ours).

``train_sae`` builds a ``LanguageModelSAERunnerConfig`` for one of SAELens's training
architectures, loads the model through TransformerLens's ``TransformerBridge`` (so hook names are
the usual ``blocks.L.hook_resid_post`` and any local HF model works offline), feeds a
pre-tokenised ``datasets.Dataset`` and returns the trained SAE as an inference ``SAE`` loaded back
from disk — the same path a user's saved SAE takes.
"""

from __future__ import annotations

from pathlib import Path

from sae_lens_ext.inputs.token_data import load_data, tokens_dataset

ARCHITECTURES = ("standard", "topk", "jumprelu")


def _sae_config(architecture: str, d_in: int, d_sae: int, k: int | None, l1_coefficient: float):
    from sae_lens import JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig, TopKTrainingSAEConfig

    common = dict(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, normalize_activations="expected_average_only_in")
    if architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=l1_coefficient)
    if architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=k or max(1, d_sae // 32))
    if architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, l0_coefficient=l1_coefficient)
    raise ValueError(f"unknown SAE architecture {architecture!r}; expected one of {ARCHITECTURES}")


def train_sae(model_dir: str | Path, dataset, hook_name: str, out_dir: str | Path, *,
              architecture: str = "standard", d_sae: int = 512, k: int | None = None,
              l1_coefficient: float = 1.0, training_tokens: int = 200_000, batch_size_tokens: int = 1024,
              lr: float = 3e-3, seed: int = 42, device: str = "cpu", model=None, verbose: bool = False):
    """Train one SAE with SAELens's ``LanguageModelSAETrainingRunner``; returns the inference SAE.

    ``dataset`` is a pre-tokenised ``datasets.Dataset`` (see ``tokens_dataset``); ``model`` may be
    a ready ``TransformerBridge`` to reuse across several trainings.
    """
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from transformer_lens.model_bridge import TransformerBridge

    if model is None:
        from reason_plugins.models import resolve_model

        model_dir = resolve_model(str(model_dir))
        model = TransformerBridge.boot_transformers(str(model_dir), device=device)
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} not found in model {str(model_dir)!r} (e.g. 'blocks.0.hook_resid_post')")
    d_in = model.cfg.d_model
    context_size = len(dataset[0]["tokens"])
    cfg = LanguageModelSAERunnerConfig(
        sae=_sae_config(architecture, d_in, d_sae, k, l1_coefficient),
        model_name=str(model_dir), hook_name=hook_name, dataset_path=str(model_dir),
        is_dataset_tokenized=True, streaming=False, context_size=context_size,
        training_tokens=training_tokens, train_batch_size_tokens=batch_size_tokens,
        store_batch_size_prompts=8, n_batches_in_buffer=16, n_batches_for_norm_estimate=10,
        lr=lr, seed=seed, device=device, prepend_bos=True, exclude_special_tokens=True,
        logger=LoggingConfig(log_to_wandb=False), output_path=str(out_dir), checkpoint_path=None,
        n_checkpoints=0, verbose=verbose,
    )
    LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()
    return SAE.load_from_disk(str(out_dir), device=device)


def cache_token_rows(folder):
    """The token rows a SAELens activation cache was made from (its ``token_ids`` as a ``tokens`` column,
    memory-mapped): SAELens's runner wants a token dataset beside a cache, and these are exactly its rows."""
    import datasets

    return datasets.load_from_disk(str(folder)).select_columns(["token_ids"]).rename_column("token_ids", "tokens")


def train_from_cache(model_dir: str | Path, cache_dir: str | Path, hook_name: str, out_dir: str | Path, *,
                     architecture: str = "standard", d_sae: int = 512, k: int | None = None, l1_coefficient: float = 1.0,
                     training_tokens: int = 200_000, batch_size_tokens: int = 1024, lr: float = 3e-3, seed: int = 42,
                     device: str = "cpu", model=None, exclude_special_tokens: bool = True):
    """``train_sae``, but from an activation cache (``reason-sae harvest`` or SAELens's
    ``CacheActivationsRunner``) with SAELens's runner and ``use_cached_activations``: no forward pass."""
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from transformer_lens.model_bridge import TransformerBridge

    from sae_lens_ext.training.activation_cache import check_cache

    folder, context_size, d_in = check_cache(cache_dir, hook_name, None)
    if model is None:  # SAELens's runner wants the model (tokenizer, evals) even when it reads a cache
        from reason_plugins.models import resolve_model

        model = TransformerBridge.boot_transformers(str(resolve_model(str(model_dir))), device=device)
    cfg = LanguageModelSAERunnerConfig(
        sae=_sae_config(architecture, d_in, d_sae, k, l1_coefficient),
        model_name=str(model_dir), hook_name=hook_name, dataset_path=str(folder), is_dataset_tokenized=True,
        streaming=False, context_size=context_size, use_cached_activations=True, cached_activations_path=str(folder),
        training_tokens=training_tokens, train_batch_size_tokens=batch_size_tokens,
        store_batch_size_prompts=4, n_batches_in_buffer=4, n_batches_for_norm_estimate=4,
        lr=lr, seed=seed, device=device, prepend_bos=False, exclude_special_tokens=exclude_special_tokens,
        logger=LoggingConfig(log_to_wandb=False), output_path=str(out_dir), checkpoint_path=None, n_checkpoints=0,
    )
    import torch

    torch.manual_seed(seed)  # the SAE's init draws from torch's global generator
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=cache_token_rows(folder), override_model=model)
    torch.manual_seed(seed)  # and so does the store's mixing: the data order is the seed's alone, whatever the SAE's size
    runner.run()
    return SAE.load_from_disk(str(out_dir), device=device)


def load_local_dataset(path: str | Path):
    """A pre-tokenised dataset from a ``save_to_disk`` folder or a .json/.jsonl/.parquet file (the
    ``train`` split of a DatasetDict), read by ``token_data.load_data``; None when ``path`` is not
    local (SAELens loads it then)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir() and path.suffix not in (".json", ".jsonl", ".parquet"):
        raise ValueError(f"dataset {str(path)!r}: expected a save_to_disk folder or a .json/.jsonl/.parquet file")
    return load_data(path, split="train")


def champ_tokens_dataset(tokenizer, context_size: int, tokens: int | None = None, seed: int = 0):
    """CHAMP's real transcripts (chat-formatted with the model's template) + plain statements as a
    pre-tokenised dataset, about ``tokens`` tokens (one epoch of ~25M at most; SAELens cycles it)."""
    from reason_plugins.champ import chat_texts

    if isinstance(tokenizer, (str, Path)):
        from reason_plugins.models import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer))  # a registered name, a folder or a cached hub name
    n = 20_000 if tokens is None else max(50, min(20_000, int(tokens) // 350))  # ~450 tokens per transcript
    return tokens_dataset(tokenizer, chat_texts(tokenizer, n=n, seed=seed), context_size=context_size, progress=True)


def load_model_for_config(config: dict, device: str | None = None):
    """The model a recipe names, or None to let SAELens load it itself (a hub HookedTransformer)."""
    from reason_plugins.models import is_registered, resolve_model
    from sae_lens_ext.loading import deepseek

    name, local, cls = config.get("model_name"), config.get("model_path"), config.get("model_class_name")
    if local is None and is_registered(name):
        local = resolve_model(name)  # a packaged model (e.g. smollm2-135m-instruct): its cached HF folder
    elif local is not None:
        local = resolve_model(local)
    device = device or config.get("device", "cpu")
    kwargs = dict(config.get("model_from_pretrained_kwargs") or {})
    if cls == "TransformerBridge":
        from transformer_lens.model_bridge import TransformerBridge

        if local is None and name in (None, "tiny-fixture"):
            raise ValueError(f"config needs model_path (a local model folder) for model_name {name!r}")
        return TransformerBridge.boot_transformers(str(local or name), device=device)
    if cls != "HookedTransformer":
        return None  # SAELens's own loaders (HookedMamba, AutoModelForCausalLM)
    if local is None:
        return None  # SAELens loads the hub model; deepseek registration is already active
    if name in deepseek.DEEPSEEK_MODELS:
        import torch

        dtype = kwargs.pop("dtype", None)
        kwargs.pop("center_writing_weights", None)  # no_processing never centres
        return deepseek.load_hooked_transformer(name, local, processing=False, device=device,
                                                dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype, **kwargs)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(local), device=device)


def use_cache(config: dict, cache_dir: str | Path) -> dict:
    """A recipe set to train from an activation cache (SAELens's ``use_cached_activations``): the cache's
    folder for the recipe's hook, its context size; refused in one line when its hook or width differ."""
    from sae_lens_ext.training.activation_cache import check_cache
    from sae_lens_ext.training.recipes import apply_overrides

    sae = config["sae"]
    folder, context_size, _ = check_cache(cache_dir, config["hook_name"], sae.get("d_in"))
    return apply_overrides(config, {"use_cached_activations": True, "cached_activations_path": str(folder),
                                    "context_size": context_size, "dataset_path": str(folder)})


def train_from_config(config: dict, *, model=None, dataset=None, out_dir: str | Path | None = None, cached: bool = False):
    """Train the SAE a recipe describes with SAELens's runner; returns the saved inference SAE.
    ``cached`` (after ``use_cache``): from the activation cache, no forward pass."""
    from sae_lens import SAE, LanguageModelSAETrainingRunner

    from sae_lens_ext.training.recipes import apply_overrides, build_runner_config

    if out_dir is not None:
        config = apply_overrides(config, {"output_path": str(out_dir)})
    runner_cfg = build_runner_config(config)  # validates every key before anything heavy loads
    if runner_cfg.output_path is None:
        raise ValueError("output_path is None: the trained SAE would not be saved")
    if model is None:
        model = load_model_for_config(config, runner_cfg.device)
    if model is not None:
        if runner_cfg.hook_name not in model.hook_dict:
            raise ValueError(f"hook {runner_cfg.hook_name!r} not found in model {config.get('model_name')!r}")
        if model.cfg.d_model != runner_cfg.sae.d_in and runner_cfg.hook_name.endswith(("resid_post", "mlp_out", "attn_out")):
            raise ValueError(f"SAE d_in {runner_cfg.sae.d_in} != model d_model {model.cfg.d_model}; "
                             f"override sae.d_in={model.cfg.d_model}")
    if cached:
        import torch

        dataset = cache_token_rows(runner_cfg.cached_activations_path)  # SAELens wants a token dataset beside its cache
        torch.manual_seed(runner_cfg.seed)  # the SAE's init
    if dataset is None and config.get("dataset_path") == "champ":
        dataset = champ_tokens_dataset(model.tokenizer if model is not None else config["model_name"],
                                       runner_cfg.context_size, runner_cfg.training_tokens)
    if dataset is None and config.get("dataset_path"):
        dataset = load_local_dataset(config["dataset_path"])
    if dataset is None and not config.get("dataset_path"):
        raise ValueError("config has no dataset_path: give a hub dataset id or a local folder from `reason-sae data`")
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model)
    if cached:  # the data order (the store's mixing) is the seed's alone, not shifted by the SAE's init draws:
        torch.manual_seed(runner_cfg.seed)  # the batches a multi-SAE run (training.multi) gives this SAE
    runner.run()
    return SAE.load_from_disk(runner_cfg.output_path, device=runner_cfg.device)
