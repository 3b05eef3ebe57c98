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


def firing_sae(kind: str, hook: str, *, seed: int = 0, d_in: int = 576, d_sae: int = 96):
    """A random SAE (``"standard"`` or ``"topk"``, k 8) whose features fire on a real model's activations: unit
    decoder rows, the encoder their scaled transpose, a negative encoder bias. Not trained: for tests and
    benchmarks on real models, where fitting one would cost minutes."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = (StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)) if kind == "standard"
           else TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8)))
    with torch.no_grad():
        w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=-1)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T * 0.5)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook
    return sae.eval()
