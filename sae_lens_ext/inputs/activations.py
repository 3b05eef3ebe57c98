"""Activations at a hook, from whatever model a user has, and the SAE features they encode to.

``ActivationSource`` reads the residual stream (or an MLP output) at ``blocks.L.hook_*`` from a
TransformerLens ``HookedTransformer`` / ``TransformerBridge`` or a plain HF model, stopping the forward
pass right after that layer; ``FeatureEncoder`` encodes it with a SAELens SAE (decoder norms folded into
the encoder, optionally a slice of features at a time); ``ignore_ids`` turns "bos"/"eos"/"pad" or ids
into the token ids a metric should skip. Used by ReasonScore, top contexts, dashboards and model diffing.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(post|pre)")
CHUNKABLE = ("standard", "jumprelu", "gated", "topk")  # encoders we can evaluate on a feature slice
SPECIAL_IGNORES = ("bos", "eos", "pad")


# ---------------------------------------------------------------- SAE
class FeatureEncoder:
    """Encodes with decoder norms folded in (on a copy: the caller's SAE is untouched), either all
    features at once (SAELens's own ``encode``) or in feature chunks to bound memory."""

    def __init__(self, sae, chunk_size: int | None = None):
        import torch

        self.sae = copy.deepcopy(sae).eval()
        self.post_scale = None
        try:
            self.sae.fold_W_dec_norm()
        except NotImplementedError:
            # TopK without rescale_acts_by_decoder_norm: folding would change which k features win,
            # so keep the SAE's selection and scale the activations by the decoder norms instead.
            self.post_scale = self.sae.W_dec.detach().norm(dim=-1).clamp(min=1e-8)
        self.d_sae = int(self.sae.cfg.d_sae)
        self.arch = self.sae.cfg.architecture()
        self.chunk = int(chunk_size) if chunk_size and int(chunk_size) < self.d_sae else None
        if self.chunk and self.arch not in CHUNKABLE:
            self.chunk = None  # unknown encoder: full encode (exact), no memory saving
        self.rescale = None
        if self.arch == "topk" and getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            self.rescale = self.sae.W_dec.detach().norm(dim=-1)
        self._torch = torch

    def _pre(self, sae_in, s: int, e: int, bias: str = "b_enc"):
        pre = sae_in @ self.sae.W_enc[:, s:e] + getattr(self.sae, bias)[s:e]
        return pre * self.rescale[s:e] if self.rescale is not None else pre

    def chunks(self, x):
        """Yield ``(start, acts [N, f])`` covering all features for activations ``x`` [N, d_in]."""
        torch, sae = self._torch, self.sae
        with torch.no_grad():
            if self.chunk is None:
                acts = sae.encode(x)
                yield 0, acts * self.post_scale if self.post_scale is not None else acts
                return
            sae_in = sae.process_sae_in(x)
            bounds = [(s, min(s + self.chunk, self.d_sae)) for s in range(0, self.d_sae, self.chunk)]
            kth = None
            if self.arch == "topk":  # pass 1: each token's k-th largest pre-activation over all chunks
                best = None
                for s, e in bounds:
                    pool = self._pre(sae_in, s, e) if best is None else torch.cat([best, self._pre(sae_in, s, e)], 1)
                    best = pool.topk(min(sae.cfg.k, pool.shape[1]), dim=1).values
                kth = best[:, -1:]
            for s, e in bounds:
                if self.arch == "gated":
                    gate = self._pre(sae_in, s, e, "b_gate") > 0
                    mag = sae_in @ (sae.W_enc[:, s:e] * sae.r_mag[s:e].exp()) + sae.b_mag[s:e]
                    acts = sae.activation_fn(mag) * gate
                elif self.arch == "topk":
                    pre = self._pre(sae_in, s, e)
                    acts = torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
                else:
                    pre = self._pre(sae_in, s, e)
                    acts = sae.activation_fn(pre)
                    if self.arch == "jumprelu":
                        acts = acts * (pre > sae.threshold[s:e])
                yield s, acts * self.post_scale[s:e] if self.post_scale is not None else acts


# ---------------------------------------------------------------- models
class _StopForward(Exception):
    """Raised by our capture hook: a plain HF model has no stop_at_layer, so we cut the forward here."""


def _decoder_layers(model):
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


class ActivationSource:
    """Residual-stream (or any TL hook) activations of a model for token batches, run once per
    batch and stopped right after the hook layer."""

    def __init__(self, model, hook: str):
        self.model, self.hook = model, hook
        layer = re.match(r"blocks\.(\d+)\.", hook)
        if hasattr(model, "hook_dict") and hasattr(model, "run_with_hooks"):  # HookedTransformer / Bridge
            if hook not in model.hook_dict:
                raise ValueError(f"hook {hook!r} not found in the model (e.g. 'blocks.0.hook_resid_post')")
            self.kind, self.d_model, n_layers = "tl", int(model.cfg.d_model), int(model.cfg.n_layers)
            self.vocab = int(model.cfg.d_vocab)
            self.stop = int(layer.group(1)) + 1 if layer and int(layer.group(1)) + 1 < n_layers else None
            return
        self.kind, self.d_model, self.vocab = "hf", int(model.config.hidden_size), int(model.config.vocab_size)
        m = RESID_HOOK.fullmatch(hook)
        if not m:
            raise ValueError(f"hook {hook!r} is not supported on a plain HF model: use 'blocks.L.hook_resid_post' "
                             f"or 'blocks.L.hook_resid_pre', or load the model through TransformerLens")
        layers = _decoder_layers(model)
        if int(m.group(1)) >= len(layers):
            raise ValueError(f"hook {hook!r} not found: the model has {len(layers)} layers (0..{len(layers) - 1})")
        self.layer, self.pre = layers[int(m.group(1))], m.group(2) == "pre"

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(self, tokens):
        import torch

        got = {}
        if tokens.numel() and (int(tokens.max()) >= self.vocab or int(tokens.min()) < 0):
            raise ValueError(f"token id {int(tokens.max())} is outside the model's vocabulary (0..{self.vocab - 1})")
        tokens = tokens.to(self.device)
        with torch.no_grad():
            if self.kind == "tl":
                def keep(act, hook):
                    got["x"] = act
                self.model.run_with_hooks(tokens, fwd_hooks=[(self.hook, keep)], return_type=None, stop_at_layer=self.stop)
                return got["x"]

            def keep_in(module, args, kwargs):
                got["x"] = args[0] if args else kwargs["hidden_states"]
                raise _StopForward

            def keep_out(module, args, output):  # decoder layer output = resid after the layer
                got["x"] = output[0] if isinstance(output, tuple) else output
                raise _StopForward

            handle = (self.layer.register_forward_pre_hook(keep_in, with_kwargs=True) if self.pre
                      else self.layer.register_forward_hook(keep_out))
            try:
                self.model(input_ids=tokens, use_cache=False)
            except _StopForward:
                pass
            finally:
                handle.remove()
        return got["x"]


def load_model(model, hook: str | None = None, backend: str = "auto", device: str = "cpu"):
    """A model from an instance (returned as is) or an HF name / local dir: plain HF for residual
    hooks (fastest), else TransformerLens's TransformerBridge ('hf' | 'bridge' | 'hooked' force one)."""
    if not isinstance(model, (str, Path)):
        return model
    from reason_plugins.models import resolve_model

    model = resolve_model(model)
    if backend == "auto":
        backend = "hf" if hook is None or RESID_HOOK.fullmatch(hook) else "bridge"
    if backend == "hf":
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).to(device).eval()
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(str(model), device=device)
    if backend == "hooked":
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained_no_processing(str(model), device=device)
    raise ValueError(f"unknown model backend {backend!r}; expected auto, hf, bridge or hooked")


def model_tokenizer(model, tokenizer=None):
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            from reason_plugins.models import load_tokenizer

            return load_tokenizer(str(tokenizer))  # a registered name, a folder or a cached hub name
        return tokenizer
    if getattr(model, "tokenizer", None) is not None:
        return model.tokenizer
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        raise ValueError("cannot find the model's tokenizer: pass tokenizer=")
    return model_tokenizer(model, name)


# ---------------------------------------------------------------- data


def ignore_ids(ignore_tokens, tokenizer) -> list[int]:
    ids = []
    for t in ignore_tokens or ():
        if isinstance(t, str) and t.lower() in SPECIAL_IGNORES:
            t = getattr(tokenizer, f"{t.lower()}_token_id")
            if t is None:
                continue
        if isinstance(t, str) and t.isdigit():
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(tokenizer):
            raise ValueError(f"ignore token {t!r} is not a token id in 0..{len(tokenizer) - 1} nor one of {SPECIAL_IGNORES}")
        ids.append(t)
    return sorted(set(ids))


# ---------------------------------------------------------------- the run
