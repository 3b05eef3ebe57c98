"""The offline world the README's examples run in (``tests/test_readme.py``): a fake Hugging Face hub
cache that answers the hub names a user types, and the small input files the examples read.

``build_world(root)`` writes, once (``atomic_dir``: an interrupted build never looks finished):

- ``hf/hub``: a hub cache (``HF_HUB_CACHE``, used with ``HF_HUB_OFFLINE=1``) holding, under the real repo
  names, tiny random-weight stand-ins with the real layout: ``deepseek-ai/DeepSeek-R1-Distill-Llama-8B``
  (a Llama with 20 layers, so ``blocks.19.hook_resid_post`` exists; d_model 128, head_dim 32, R1's chat
  template and think tokens), ``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`` (a Qwen2 with 18 layers, deep
  enough for its recipe's layer 17), ``meta-llama/Llama-3.1-8B`` (the Llama's base-model twin, other seed),
  the paper's SAE release ``andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts`` (a SAELens-format
  standard SAE, d_sae 49152 so feature 46379 exists, small weights) and EleutherAI's sparsify release
  ``EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k`` (one hookpoint, ``layers.12.mlp``, 256 latents);
- ``inputs/``: the files the examples name (LMSYS / OpenThoughts dumps with the real schemas, traces,
  prompts, steering-vector files, arms, a local model snapshot), copied into each session's working directory by the runner.

The SAE's metadata says what the real one says (hook, model, no BOS) except ``context_size`` (256, not
1024: rows of a few tiny documents).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reason_plugins import tiny_models

LLAMA_8B = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
QWEN_15B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
BASE_LLAMA = "meta-llama/Llama-3.1-8B"
PAPER_SAE = "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts"
SPARSIFY_SAE = "EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k"
PAPER_HOOK = "blocks.19.hook_resid_post"
D_SAE = 49152
SAE_CONTEXT = 256
REVISION = "0" * 40  # the snapshot every fake repo has
VERSION = 5  # bump when what is built changes: the world is cached by it


def _snapshot(hub: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the cache, with ``refs/main`` pointing at it (what
    huggingface_hub reads offline)."""
    base = hub / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(REVISION)
    snap = base / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _model(snap: Path, tokenizer_dir: Path, family: str, layers: int, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = dict(tiny_models.MODEL_SHAPE, num_hidden_layers=layers, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, rope_theta=10000.0))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**shape, rope_theta=10000.0, use_sliding_window=False))
    model.to(torch.float32).save_pretrained(snap, safe_serialization=True)
    tok.save_pretrained(snap)


def _paper_sae(folder: Path) -> None:
    """A standard SAE with small weights: most features silent, every edit a small change."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.05)
        sae.b_enc.fill_(-0.2)
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, 128), dim=1) * 0.1)
        sae.b_dec.zero_()
    meta = sae.cfg.metadata
    meta.hook_name, meta.model_name, meta.context_size, meta.prepend_bos = PAPER_HOOK, LLAMA_8B, SAE_CONTEXT, False
    sae.save_model(str(folder))


def _sparsify_sae(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    n, d = 256, 128
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": torch.randn(n, d, generator=g) / d ** 0.5, "encoder.bias": torch.zeros(n),
               "W_dec": torch.randn(n, d, generator=g) * 0.1, "b_dec": torch.zeros(d)}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 2, "normalize_decoder": True,
                                                 "num_latents": n, "k": 8, "multi_topk": False, "skip_connection": False,
                                                 "transcode": False, "d_in": d}))


def _inputs(folder: Path, tokenizer_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from reason_plugins.corpus import reasoning_examples
    from reason_plugins.vector_files import save_vectors
    from tests.support.records import lmsys_records, openthoughts_records
    from tests.support.vector_files import write_control_vector_gguf

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(lmsys_records(40)), str(folder / "lmsys-chat-1m.parquet"))
    pq.write_table(pa.Table.from_pylist(openthoughts_records(40)), str(folder / "openthoughts-114k.parquet"))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    traces = tiny_models.training_texts(tok, n=24, seed=5)
    (folder / "traces.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in traces))
    g = torch.Generator().manual_seed(3)  # steering-vector files, as repeng and `reason-sae vector` write them
    write_control_vector_gguf(folder / "happy.gguf", {n: (torch.randn(128, generator=g) * 0.1).numpy() for n in (18, 19)}, "llama")
    save_vectors(folder / "dom.safetensors", {PAPER_HOOK: torch.randn(128, generator=g) * 0.1}, {})
    spec = {"sae": PAPER_SAE, "sae_id": PAPER_HOOK, "hook": PAPER_HOOK, "edits": [{"feature": 46379, "mode": "set", "value": 11.68}]}
    (folder / "arms.json").write_text(json.dumps({"sweep": {"sae": PAPER_SAE, "sae_id": PAPER_HOOK, "hook": PAPER_HOOK,
                                                            "features": [46379], "strengths": [2, 4], "max_activation": 5.84}}))
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": "What is 17 + 5?", "steering": json.dumps(spec)}, {"prompt": "Is 91 prime?", "steering": None})))
    problems = [ex["problem"] for ex in reasoning_examples(2, seed=9)]
    (folder / "problems.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in problems))


def build_world(root: str | Path) -> Path:
    """The README world under ``root/world-v<VERSION>`` (built once, then reused)."""
    root = Path(root)

    def build(tmp: Path) -> None:
        tokenizer_dir = tiny_models.build_tokenizer(tmp / "tokenizer")
        hub = tmp / "hf" / "hub"
        _model(_snapshot(hub, LLAMA_8B), tokenizer_dir, "llama", 20, seed=0)
        _model(_snapshot(hub, BASE_LLAMA), tokenizer_dir, "llama", 20, seed=1)
        _model(_snapshot(hub, QWEN_15B), tokenizer_dir, "qwen2", 18, seed=2)
        _paper_sae(_snapshot(hub, PAPER_SAE) / PAPER_HOOK)
        _sparsify_sae(_snapshot(hub, SPARSIFY_SAE) / "layers.12.mlp")
        _inputs(tmp / "inputs", tokenizer_dir)
        shutil.copytree(_snapshot(hub, QWEN_15B), tmp / "inputs" / "r1-qwen-1.5b")  # a local snapshot
        shutil.rmtree(tokenizer_dir)

    return tiny_models.atomic_dir(root / f"world-v{VERSION}", build)


def world_env(world: Path) -> dict:
    """What a session's environment adds: the fake hub, offline."""
    hf = world / "hf"
    return {"HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "HUGGINGFACE_HUB_CACHE": str(hf / "hub"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}
