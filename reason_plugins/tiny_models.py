"""Tiny, deterministic, offline stand-ins for the real things: a BPE tokenizer with R1's chat
template and ``<think>`` tokens, Llama / Qwen2 causal LMs (head_dim 32 so vLLM's CPU backend
accepts them) and an optional short LM training run on the synthetic corpus. (Tiny SAEs fitted to
them: ``sae_lens_ext.training.tiny_saes``.)

Used by the tests (built once per session under a temp dir) and by the embedded demo (cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from reason_plugins.corpus import THINK_CLOSE, THINK_OPEN, corpus_texts, reasoning_examples, render_trace

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜pad｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE]

# DeepSeek-R1-Distill's template, reduced to what matters: BOS, user/assistant turns, and an
# assistant prefix that opens the think section.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + THINK_OPEN + "\n{% endif %}"
)

# Small enough to build and run in seconds, big enough for vLLM's CPU attention (head_dim >= 32).
MODEL_SHAPE = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
)
FAMILIES = ("llama", "qwen2")


def atomic_dir(final: Path, build) -> Path:
    """Build into a temp sibling, then rename: an interrupted build never looks finished."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tokenizer(out_dir: str | Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Train a byte-level BPE on the synthetic corpus and save it as an HF fast tokenizer."""

    def build(tmp: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(corpus_texts(seed=seed), trainer=trainer)
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
            additional_special_tokens=[USER, ASSISTANT, THINK_OPEN, THINK_CLOSE], model_max_length=4096,
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(tmp)

    return atomic_dir(Path(out_dir), build)


def build_model(out_dir: str | Path, tokenizer_dir: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """A random-weight causal LM of the given family, saved with the tokenizer beside it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown fixture model family {family!r}; expected one of {FAMILIES}")

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        if family == "llama":
            config = LlamaConfig(**MODEL_SHAPE, **ids, tie_word_embeddings=False, rope_theta=10000.0)
            model = LlamaForCausalLM(config)
        else:
            config = Qwen2Config(**MODEL_SHAPE, **ids, tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False)
            model = Qwen2ForCausalLM(config)
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_dir(Path(out_dir), build)


def training_texts(tokenizer, n: int = 600, seed: int = 0) -> list[str]:
    """Chat-formatted problem + trace pairs, the way a distilled model sees its own outputs."""
    texts = []
    for ex in reasoning_examples(n, seed):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": ex["problem"]}], tokenize=False, add_generation_prompt=True)
        # the template already opened <think>; the trace continues from there
        texts.append(prompt + render_trace(ex)[len(THINK_OPEN) + 1:] + tokenizer.eos_token)
    return texts


def train_model(model_dir: str | Path, out_dir: str | Path, steps: int = 300, seed: int = 0,
                batch_size: int = 16, lr: float = 3e-3, progress: bool = True) -> tuple[Path, list[float]]:
    """Briefly train a fixture LM on chat-formatted reasoning traces so it emits reasoning words.

    Returns the trained model's directory and the loss curve (also saved as ``train_losses.json``).
    """
    out_dir = Path(out_dir)

    def build(tmp: Path) -> None:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        texts = training_texts(tokenizer, seed=seed)
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        model.train()
        for _ in tqdm(range(steps), desc="training tiny LM", disable=not progress):
            pick = torch.randint(0, ids.shape[0], (batch_size,), generator=gen)
            loss = model(input_ids=ids[pick], attention_mask=mask[pick], labels=labels[pick]).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "train_losses.json").write_text(json.dumps(losses))

    atomic_dir(out_dir, build)
    return out_dir, json.loads((out_dir / "train_losses.json").read_text())


def cache_key(*parts) -> str:
    """A short hash naming a cached build by everything it depends on."""
    from reason_plugins import __version__

    return hashlib.sha256(json.dumps([__version__, MODEL_SHAPE, *parts], sort_keys=True, default=str).encode()).hexdigest()[:12]
