"""DeepSeek-R1-Distill models in TransformerLens, without a fork.

``HookedTransformer`` only loads names listed in ``transformer_lens.supported_models`` and
converts their HF config by name inside ``loading_from_pretrained.convert_hf_model_config``; any
name containing "llama" is assumed to be a Meta checkpoint and never reads its HF config, so
``DeepSeek-R1-Distill-Llama-8B`` cannot load there as shipped. TransformerLens offers no hook for
either, so ``register()`` makes a minimal, idempotent patch of that module (never of an installed
file): it appends our names to ``OFFICIAL_MODEL_NAMES`` / ``MODEL_ALIASES`` and wraps
``convert_hf_model_config`` and ``get_pretrained_model_config`` so that, for our names only, the
TransformerLens config is built from the model's own HF config:

- Llama distills: the Llama-3.1 layout with its llama3 (NTK-by-parts) rope scaling;
- Qwen distills: the Qwen2 layout (q/k/v biases, GQA);
- ``n_ctx`` = the HF ``max_position_embeddings`` (131072 for all of them): reasoning traces run
  to 32k tokens and TransformerLens 3.9 builds its causal mask and rotary tables lazily, so
  nothing of size n_ctx is allocated up front. TL caps its own Llama-3.1 entries at 2048.

When it happens: right after ``transformer_lens.loading_from_pretrained`` is imported (at once if it
already is), armed by ``sae_lens_ext.loading.autoload`` — which our installed ``.pth`` imports at every
interpreter start, and ``import sae_lens_ext`` imports too — so a plain TransformerLens script needs
no import of ours (see ``import_hooks``).

``TransformerBridge`` already lists these models and reads the HF config itself (n_ctx included);
``load_bridge`` only adds the local-snapshot convenience that ``load_hooked_transformer`` has.
"""

from __future__ import annotations

import contextvars
import functools
from pathlib import Path

from reason_plugins.hookspecs import hookimpl

LLAMA, QWEN2 = "LlamaForCausalLM", "Qwen2ForCausalLM"

# HF repo -> (architecture, n_layers): the 6 R1 distills; all share a conversion per architecture.
DEEPSEEK_MODELS = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (QWEN2, 28),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (QWEN2, 28),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (QWEN2, 48),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": (QWEN2, 64),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (LLAMA, 32),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": (LLAMA, 80),
}

# The HF config used by the conversion currently running (set from a passed ``hf_model``).
_hf_config_override: contextvars.ContextVar = contextvars.ContextVar("deepseek_hf_config", default=None)


def _aliases(name: str) -> list[str]:
    return [name.split("/")[-1], name.split("/")[-1].lower()]


def _as_dict(hf_config) -> dict:
    return hf_config if isinstance(hf_config, dict) else hf_config.to_dict()


def tl_config_from_hf(model_name: str, hf_config) -> dict:
    """The HookedTransformer config dict for one of our models, built from its HF config (a
    ``PretrainedConfig`` or its ``to_dict()``). Refuses what TransformerLens would compute wrongly."""
    if model_name not in DEEPSEEK_MODELS:
        raise ValueError(f"unknown DeepSeek-R1-Distill model {model_name!r}; expected one of {sorted(DEEPSEEK_MODELS)}")
    expected = DEEPSEEK_MODELS[model_name][0]
    hf = _as_dict(hf_config)
    arch = (hf.get("architectures") or [expected])[0]
    if arch != expected:
        raise ValueError(f"{model_name!r} should be a {expected}, but its HF config says {arch!r}")
    n_heads, kv_heads = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = hf.get("rope_theta") or rope.get("rope_theta") or 10000.0
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{model_name!r}: rope type {rope_type!r} is not supported (expected 'default' or 'llama3')")
    cfg = {
        "d_model": hf["hidden_size"], "d_head": d_head, "n_heads": n_heads,
        "d_mlp": hf["intermediate_size"], "n_layers": hf["num_hidden_layers"],
        "n_ctx": hf["max_position_embeddings"],  # never capped: traces run to 32k tokens
        "eps": hf["rms_norm_eps"], "d_vocab": hf["vocab_size"], "act_fn": hf.get("hidden_act", "silu"),
        "n_key_value_heads": kv_heads if kv_heads != n_heads else None,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False, "rotary_dim": d_head, "rotary_base": rope_theta,
        "final_rms": True, "gated_mlp": True, "original_architecture": arch,
        "default_prepend_bos": True,  # R1 chat text starts with <｜begin▁of▁sentence｜> for both families
    }
    if rope_type == "llama3":  # Llama-3.1 NTK-by-parts scaling
        cfg.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=rope.get("factor", 8.0),
                   NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
                   NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
                   NTK_original_ctx_len=rope.get("original_max_position_embeddings", 8192))
    if arch == LLAMA and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ValueError(f"{model_name!r}: Llama with attention/MLP biases cannot be converted by TransformerLens")
    if arch == QWEN2:
        layer_types = hf.get("layer_types") or []
        if hf.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
            raise ValueError(f"{model_name!r}: sliding-window attention is not supported by HookedTransformer")
        cfg.update(n_key_value_heads=kv_heads, use_attn_scale=True, initializer_range=hf.get("initializer_range", 0.02))
    return cfg


def _official(loading, model_name: str) -> str | None:
    """Our official name for ``model_name`` (an alias or any casing), or None."""
    if Path(model_name).exists():
        return None
    try:
        name = loading.get_official_model_name(model_name)
    except ValueError:
        return None
    return name if name in DEEPSEEK_MODELS else None


def _patch(loading) -> None:
    """The actual registration into ``transformer_lens.loading_from_pretrained`` (idempotent)."""
    if getattr(loading, "_reason_plugins_deepseek", False):
        return
    for name in DEEPSEEK_MODELS:  # the very list objects TL's name lookup reads
        if name not in loading.OFFICIAL_MODEL_NAMES:
            loading.OFFICIAL_MODEL_NAMES.append(name)
        aliases = loading.MODEL_ALIASES.setdefault(name, [])
        aliases += [a for a in _aliases(name) if a not in aliases]

    original_convert = loading.convert_hf_model_config
    original_get_config = loading.get_pretrained_model_config

    @functools.wraps(original_convert)
    def convert_hf_model_config(model_name, **kwargs):
        official = _official(loading, model_name)
        if official is None:
            return original_convert(model_name, **kwargs)
        hf_config = _hf_config_override.get()
        if hf_config is None:  # no hf_model given: read the config (hub or local HF cache)
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(official, **kwargs)
        cfg = tl_config_from_hf(official, hf_config)
        from transformer_lens.utilities.quantization import quantization_method

        cfg["quantization_method"] = quantization_method(hf_config)
        cfg["tokenizer_name"] = official
        return cfg

    @functools.wraps(original_get_config)
    def get_pretrained_model_config(model_name, hf_cfg=None, *args, **kwargs):
        if hf_cfg and _official(loading, model_name) is not None:
            token = _hf_config_override.set(hf_cfg)  # convert from the model in hand, no hub call
            try:
                return original_get_config(model_name, hf_cfg, *args, **kwargs)
            finally:
                _hf_config_override.reset(token)
        return original_get_config(model_name, hf_cfg, *args, **kwargs)

    loading.convert_hf_model_config = convert_hf_model_config
    loading.get_pretrained_model_config = get_pretrained_model_config
    loading._reason_plugins_deepseek = True


def register() -> None:
    """Register the DeepSeek-R1-Distill names with TransformerLens (now or when it is imported).
    Already armed by ``sae_lens_ext.loading.autoload`` (package import and our ``.pth``); idempotent."""
    from sae_lens_ext.loading.autoload import install

    install()


def _load_local(local_dir, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(str(local_dir), dtype=dtype or torch.float32)
    return hf_model, AutoTokenizer.from_pretrained(str(local_dir))


def load_hooked_transformer(model_name: str, local_dir: str | Path | None = None, *, processing: bool = True,
                            dtype=None, **kwargs):
    """``HookedTransformer.from_pretrained(model_name)``, or — with ``local_dir`` — the same from a
    local snapshot (weights, config and tokenizer read from the directory, never the hub).
    ``processing=False`` is ``from_pretrained_no_processing`` (what SAELens training uses)."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    register()
    if _official(loading, model_name) is None:
        raise ValueError(f"unknown DeepSeek-R1-Distill model {model_name!r}; expected one of {sorted(DEEPSEEK_MODELS)}")
    load = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
    if dtype is not None:
        kwargs["dtype"] = dtype
    if local_dir is None:
        return load(model_name, **kwargs)
    hf_model, tokenizer = _load_local(local_dir, dtype)
    return load(model_name, hf_model=hf_model, tokenizer=tokenizer, **kwargs)


def load_bridge(model_name: str, local_dir: str | Path | None = None, **kwargs):
    """``TransformerBridge.boot_transformers(model_name)``, optionally from a local snapshot."""
    from transformer_lens.model_bridge import TransformerBridge

    if local_dir is None:
        return TransformerBridge.boot_transformers(model_name, **kwargs)
    hf_model, tokenizer = _load_local(local_dir, kwargs.get("dtype"))
    return TransformerBridge.boot_transformers(model_name, hf_model=hf_model, tokenizer=tokenizer, **kwargs)


@hookimpl
def reason_model_configs() -> dict:
    return {
        name: {"architecture": arch, "n_layers": n_layers, "hooked_transformer": True, "transformer_bridge": True,
               "n_ctx": "HF max_position_embeddings", "aliases": _aliases(name)}
        for name, (arch, n_layers) in DEEPSEEK_MODELS.items()
    }
