"""Tiny SAEs of SAELens's architectures fitted to a tiny fixture model (tests, demo, benchmarks): the
SAELens half of the offline fixtures, whose model half is ``reason_plugins.tiny_models``."""

from __future__ import annotations

from pathlib import Path

from reason_plugins.tiny_models import atomic_dir, training_texts

HOOK = "blocks.2.hook_resid_post"  # where the tiny SAEs are fitted (the tests' FIXTURE_HOOK)


def build_saes(model_dir: str | Path, tokenizer_dir: str | Path, out_root: str | Path, *,
               hook_name: str = HOOK, architectures=("standard", "topk", "jumprelu"),
               d_sae: int = 256, training_tokens: int = 40_000, seed: int = 0) -> dict[str, Path]:
    """Tiny SAEs of SAELens's architectures fitted (with SAELens's own runner) to one layer of a
    fixture model. Returns ``{architecture: SAE directory}`` loadable with ``SAE.load_from_disk``."""
    import torch
    from transformers import AutoTokenizer

    from sae_lens_ext.inputs.token_data import tokens_dataset
    from sae_lens_ext.training.train import train_sae

    out_root = Path(out_root)
    todo = [a for a in architectures if not (out_root / a).exists()]
    if todo:
        from transformer_lens.model_bridge import TransformerBridge

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        dataset = tokens_dataset(tokenizer, training_texts(tokenizer, seed=seed), context_size=128)
        bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
        def fit(tmp, arch):
            torch.manual_seed(seed)  # SAELens's runner seeds no torch: the same weights whichever process fits which SAE
            train_sae(model_dir, dataset, hook_name, tmp, architecture=arch, d_sae=d_sae,
                      k=16 if arch == "topk" else None, l1_coefficient=0.2, training_tokens=training_tokens, seed=seed, model=bridge)

        for arch in todo:
            atomic_dir(out_root / arch, lambda tmp, arch=arch: fit(tmp, arch))
    return {a: out_root / a for a in architectures}
