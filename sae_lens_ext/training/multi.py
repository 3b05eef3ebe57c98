"""Several SAEs from one harvest, trained together by SAELens's ``MultiSAETrainer`` (hooks x sizes).

SAELens's ``MultiSAETrainingRunner`` reads no activation cache in the pinned version, but the trainer
under it only wants a multi-hook data provider. We give it one made of SAELens's own parts: per SAE a
stock ``LanguageModelSAETrainingRunner`` is built exactly as a single cached run builds it (its SAE, its
cached ``ActivationsStore``, its saving), and the stores of the hooks are read batch by batch as each
store reads alone (``get_filtered_llm_batch``, same epoch handling) and mixed by SAELens's
``multi_hook_concat_split_iter``, whose one permutation per buffer is the permutation a single store's
``mixing_buffer`` draws. With the seed set before each SAE is built and again before training (as
``train.train_from_config`` does for a single cached run), an SAE of a multi run is the SAE its own
single run makes (``tests/test_harvest.py`` holds the two to equality).

No model is loaded: reading a cache needs the tokenizer alone (the special tokens SAELens leaves out).
"""

from __future__ import annotations

import warnings
from pathlib import Path


def parse_list(text, what: str) -> list[str]:
    """``"a,b"`` or a list -> unique non-empty items in order."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else [str(x).strip() for x in text]
    items = list(dict.fromkeys(x for x in items if x))
    if not items:
        raise ValueError(f"{what}: give at least one value")
    return items


def parse_sizes(sizes) -> list[int]:
    """SAE widths (``d_sae``) as positive integers, e.g. ``"512,1024"``."""
    out = []
    for item in parse_list(sizes, "--sizes"):
        try:
            size = int(item)
        except ValueError:
            size = 0
        if size <= 0 or str(size) != item.lstrip("+"):
            raise ValueError(f"--sizes: {item!r} is not an SAE width; give d_sae values as positive integers, e.g. --sizes 512,1024")
        out.append(size)
    return list(dict.fromkeys(out))


def sae_name(hook: str, d_sae: int) -> str:
    """The folder one SAE of a multi run is saved in (under the run's output path)."""
    return f"{hook}-d{d_sae}"


def plan(config: dict, cache_dir: str | Path, hooks=None, sizes=None) -> dict[str, dict]:
    """``{name: recipe}``, one cached-training recipe per hook x size, every one checked (the cache holds
    the hook at the recipe's width, the hooks share one harvest's rows, the recipe builds) before
    anything loads; refusals are one line naming the fix."""
    import datasets

    from sae_lens_ext.training.activation_cache import read_identity
    from sae_lens_ext.training.recipes import apply_overrides, build_runner_config
    from sae_lens_ext.training.train import use_cache

    hooks = parse_list(hooks, "--hooks") if hooks else [config["hook_name"]]
    sizes = parse_sizes(sizes) if sizes else [None]
    root = Path(cache_dir)
    identity = read_identity(root) if (root / "harvest.json").exists() else None
    held = (identity or {}).get("identity", {}).get("hooks")
    if len(hooks) > 1 and held is None:
        raise ValueError(f"--cached-activations {str(root)!r} is not a `reason-sae harvest` folder (no harvest.json): "
                         f"several hooks train from one harvest of them all (reason-sae harvest --hooks {','.join(hooks)})")
    for hook in hooks:
        if held is not None and hook not in held:
            raise ValueError(f"the harvest {str(root)!r} holds {held}, not {hook!r}: harvest that hook too, or drop it from --hooks")
    if config.get("resume_from_checkpoint") or config.get("compile_sae"):
        raise ValueError("resume_from_checkpoint / compile_sae are not supported when several SAEs train together: train one SAE per run")
    recipes, rows = {}, {}
    for hook in hooks:
        for size in sizes:
            recipe = apply_overrides(config, {"hook_name": hook, **({"sae.d_sae": size} if size else {})})
            recipe = use_cache(recipe, root)  # refused here if the cache's hook or width differ from the recipe's
            runner_cfg = build_runner_config(recipe)
            sae = runner_cfg.sae
            if getattr(sae, "k", None) is not None and sae.k > sae.d_sae:
                raise ValueError(f"size {sae.d_sae} is smaller than the recipe's k={sae.k} (TopK): give larger --sizes or --override sae.k=N")
            name = sae_name(hook, sae.d_sae)
            if name in recipes:
                raise ValueError(f"two SAEs would both be {name!r}: give each size once")
            recipes[name] = recipe
            rows.setdefault(hook, datasets.load_from_disk(recipe["cached_activations_path"]).num_rows)
    if len(set(rows.values())) > 1:
        raise ValueError(f"the hooks' caches hold different row counts {rows}: they are not one harvest; harvest them together")
    return recipes


class _TokenizerOnly:
    """What SAELens's runner reads of its model when training from a cache: the tokenizer (special tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def _stand_in(config: dict):
    """The recipe's tokenizer as TransformerLens sets it up for its model (a missing pad / BOS token is the EOS
    token there): the special tokens a single run, which loads the model, leaves out."""
    from transformer_lens.model_bridge.sources.transformers import setup_tokenizer

    from reason_plugins.models import load_tokenizer

    return _TokenizerOnly(setup_tokenizer(load_tokenizer(config.get("model_path") or config["model_name"])))


def multi_hook_batches(stores: dict):
    """The hooks' cached stores read in lockstep, each batch filtered as a single store filters it
    (``get_filtered_llm_batch``), a new epoch begun as ``ActivationsStore._iterate_filtered_activations``
    begins one; mixed by SAELens's ``multi_hook_concat_split_iter`` (one permutation for all hooks)."""
    from sae_lens.training.mixing_buffer import multi_hook_concat_split_iter

    def loader():
        while True:
            try:
                yield {h: s.get_filtered_llm_batch(raise_on_epoch_end=True) for h, s in stores.items()}
            except StopIteration:
                warnings.warn("All samples in the training dataset have been exhausted, beginning new epoch.", stacklevel=2)
                try:
                    yield {h: s.get_filtered_llm_batch() for h, s in stores.items()}
                except StopIteration:
                    raise ValueError("Unable to fill buffer after starting new epoch. Dataset may be too small.") from None

    first = next(iter(stores.values()))
    mixed = multi_hook_concat_split_iter(buffer_size=first.n_batches_in_buffer * first.training_context_size,
                                         batch_size=first.train_batch_size_tokens, activations_loader=loader(),
                                         hook_names=list(stores), mix_fraction=first.activations_mixing_fraction)
    # each hook's slice of the packed batch, laid out as a single store's batch is (same kernels, same sums)
    return ({h: t.contiguous() for h, t in batch.items()} for batch in mixed)


def train_many_from_cache(config: dict, cache_dir: str | Path, *, hooks=None, sizes=None, out_dir: str | Path | None = None,
                          model=None) -> dict:
    """Train one SAE per hook x size of ``config`` together from the harvest ``cache_dir`` with SAELens's
    ``MultiSAETrainer``; each is saved in ``<output_path>/<hook>-d<d_sae>`` as a single run saves it
    (``SAE.load_from_disk`` loads it). Returns ``{name: inference SAE}``. ``model``: what SAELens's runner
    is handed as its model (default: the recipe's tokenizer alone; nothing is run through it)."""
    import torch
    from sae_lens import SAE, LanguageModelSAETrainingRunner
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    from sae_lens_ext.training.recipes import apply_overrides, build_runner_config
    from sae_lens_ext.training.train import cache_token_rows

    if out_dir is not None:
        config = apply_overrides(config, {"output_path": str(out_dir)})
    if config.get("output_path") is None:
        raise ValueError("output_path is None: the trained SAEs would not be saved")
    recipes = plan(config, cache_dir, hooks, sizes)
    base = Path(config["output_path"])
    model = model if model is not None else _stand_in(config)
    runners = {}
    for name, recipe in recipes.items():
        runner_cfg = build_runner_config(apply_overrides(recipe, {"output_path": str(base / name)}))
        torch.manual_seed(runner_cfg.seed)  # each SAE's init, as its single run draws it
        rows = cache_token_rows(runner_cfg.cached_activations_path)
        runners[name] = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=rows, override_model=model)
    first = next(iter(runners.values()))
    stores = {}
    for runner in runners.values():
        stores.setdefault(runner.cfg.hook_name, runner.activations_store)
    for runner in runners.values():
        runner._set_sae_metadata()  # SAELens's own: hook, model, context size... saved with each SAE
    if first.cfg.logger.log_to_wandb:
        import wandb

        wandb.init(project=first.cfg.logger.wandb_project, entity=first.cfg.logger.wandb_entity,
                   config={name: r.cfg.to_dict() for name, r in runners.items()}, name=first.cfg.logger.run_name)
    torch.manual_seed(first.cfg.seed)  # the data order: the seed alone, as in a single cached run
    trainer = MultiSAETrainer(cfg=first.cfg.to_sae_trainer_config(), saes={n: r.sae for n, r in runners.items()},
                              hook_names={n: r.cfg.hook_name for n, r in runners.items()},
                              data_provider=multi_hook_batches(stores))
    saes = trainer.fit()
    for name, runner in runners.items():
        runner.save_final_sae(sae=saes[name], output_path=runner.cfg.output_path,
                              log_feature_sparsity=trainer.trainers[name].log_feature_sparsity)
    if first.cfg.logger.log_to_wandb:
        import wandb

        wandb.finish()
    return {name: SAE.load_from_disk(str(base / name), device=runners[name].cfg.device) for name in runners}
