"""DeepSeek-R1-Distill names load in TransformerLens (HookedTransformer + TransformerBridge) through
our registration, on tiny models carrying the real HF config classes (Llama with llama3 rope
scaling, Qwen2 with q/k/v biases); logits match HF within 1e-4."""

from __future__ import annotations

import pytest
import torch

from reason_plugins import tiny_models

LLAMA_NAME = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
QWEN_NAME = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LONG_CTX = 131072  # what the real distills declare
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # small, so a 200-token test crosses it


def _build(family: str, out, tokenizer_dir, rope_scaling=None):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(tiny_models.MODEL_SHAPE, max_position_embeddings=LONG_CTX, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(1)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, rope_theta=500000.0, rope_scaling=rope_scaling))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False))
        with torch.no_grad():  # non-zero q/k/v biases, so a dropped bias would show
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.3)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, tokenizer_dir):
    return _build("llama", tmp_path_factory.mktemp("r1_llama"), tokenizer_dir, ROPE_LLAMA3)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tokenizer_dir):
    return _build("qwen2", tmp_path_factory.mktemp("r1_qwen"), tokenizer_dir)


@pytest.fixture(scope="module")
def tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    return torch.randint(7, vocab, (2, 200), generator=torch.Generator().manual_seed(0))


def _hf_logits(model_dir, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("name,family", [(LLAMA_NAME, "llama"), (QWEN_NAME, "qwen2")])
def test_hooked_transformer_loads_deepseek_name_with_hf_logits(name, family, llama3_dir, qwen_dir, tokens):
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sae_lens_ext.loading.deepseek  # noqa: F401  (the registration)

    model_dir = llama3_dir if family == "llama" else qwen_dir
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    raw = HookedTransformer.from_pretrained_no_processing(name, hf_model=hf, tokenizer=tok, device="cpu")
    assert raw.cfg.n_ctx == LONG_CTX  # not capped to 2048
    expected = _hf_logits(model_dir, tokens)
    with torch.no_grad():
        diff = (raw(tokens) - expected).abs().max().item()
    assert diff < 1e-4, f"{name}: max |logit diff| {diff:.2e}"
    # the default, weight-processed load: logits equal up to a per-position constant (centred unembed)
    processed = HookedTransformer.from_pretrained(name, hf_model=hf, tokenizer=tok, device="cpu")
    with torch.no_grad():
        diff = (processed(tokens).log_softmax(-1) - expected.log_softmax(-1)).abs().max().item()
    assert diff < 1e-4, f"{name} (processed): max |log-prob diff| {diff:.2e}"


def test_llama_rope_scaling_is_carried_and_matters(llama3_dir, tokenizer_dir, tmp_path, tokens):
    from transformers import AutoConfig

    from sae_lens_ext.loading.deepseek import load_hooked_transformer, tl_config_from_hf

    cfg = tl_config_from_hf(LLAMA_NAME, AutoConfig.from_pretrained(str(llama3_dir)))
    assert cfg["use_NTK_by_parts_rope"] and cfg["NTK_by_parts_factor"] == 8.0 and cfg["NTK_original_ctx_len"] == 64
    assert cfg["rotary_base"] == 500000.0 and cfg["n_ctx"] == LONG_CTX
    # the local-snapshot loader gives the same logits as HF ...
    model = load_hooked_transformer(LLAMA_NAME, llama3_dir, processing=False, device="cpu")
    with torch.no_grad():
        ours = model(tokens)
    assert (ours - _hf_logits(llama3_dir, tokens)).abs().max() < 1e-4
    # ... and the scaling is not a no-op here: the same weights without it differ
    unscaled = _build("llama", tmp_path / "unscaled", tokenizer_dir, rope_scaling=None)
    assert (ours - _hf_logits(unscaled, tokens)).abs().max() > 1e-3


def test_registration_is_visible_and_idempotent():
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    from reason_plugins.manager import registry
    from sae_lens_ext.loading import deepseek

    deepseek.register()
    deepseek._patch(loading)  # twice more: still one entry each
    for name in deepseek.DEEPSEEK_MODELS:
        assert OFFICIAL_MODEL_NAMES.count(name) == 1
        assert loading.get_official_model_name(name.split("/")[-1].lower()) == name
    assert registry("model_config")[QWEN_NAME]["architecture"] == "Qwen2ForCausalLM"
    with pytest.raises(ValueError, match="unknown DeepSeek-R1-Distill model 'deepseek-ai/DeepSeek-R1-Distill-Qwen-3B'"):
        deepseek.load_hooked_transformer("deepseek-ai/DeepSeek-R1-Distill-Qwen-3B", "/nonexistent")
    # other models still go through TransformerLens's own conversion
    assert loading.convert_hf_model_config("meta-llama/Llama-3.1-8B")["n_ctx"] == 2048


def test_conversion_refuses_what_it_cannot_represent(qwen_dir):
    from transformers import AutoConfig

    from sae_lens_ext.loading.deepseek import tl_config_from_hf

    hf = AutoConfig.from_pretrained(str(qwen_dir)).to_dict()
    with pytest.raises(ValueError, match="should be a LlamaForCausalLM"):
        tl_config_from_hf(LLAMA_NAME, hf)
    with pytest.raises(ValueError, match="sliding-window"):
        tl_config_from_hf(QWEN_NAME, dict(hf, use_sliding_window=True))


@pytest.mark.parametrize("name,family", [(LLAMA_NAME, "llama"), (QWEN_NAME, "qwen2")])
def test_transformer_bridge_under_deepseek_name(name, family, llama3_dir, qwen_dir, tokens):
    import json
    from importlib.resources import files

    from sae_lens_ext.loading.deepseek import load_bridge

    registry = json.loads(files("transformer_lens").joinpath("tools/model_registry/data/supported_models.json").read_text())
    listed = {m["model_id"] for m in registry["models"]} if isinstance(registry, dict) else {m["model_id"] for m in registry}
    assert name in listed  # TransformerBridge lists the distills itself
    model_dir = llama3_dir if family == "llama" else qwen_dir
    bridge = load_bridge(name, model_dir, device="cpu")
    assert bridge.cfg.n_ctx == LONG_CTX and "blocks.2.hook_mlp_out" in bridge.hook_dict
    with torch.no_grad():
        diff = (bridge(tokens) - _hf_logits(model_dir, tokens)).abs().max().item()
    assert diff < 1e-4, f"bridge {name}: max |logit diff| {diff:.2e}"


def test_plugin_manager_registers_before_hosts_are_imported():
    """In a fresh process: load our plugins first (cheap, nothing heavy imported), then import the
    hosts; the DeepSeek names and our SAE releases are there without any further call."""
    import subprocess
    import sys

    code = (
        "import sys, reason_plugins\n"
        "reason_plugins.get_plugin_manager()\n"
        "assert 'transformer_lens' not in sys.modules and 'sae_lens' not in sys.modules\n"
        "from transformer_lens import HookedTransformer\n"
        "import transformer_lens.loading_from_pretrained as loading\n"
        f"assert loading.get_official_model_name('deepseek-r1-distill-qwen-1.5b') == {QWEN_NAME!r}\n"
        "from sae_lens import SAE\n"
        "from sae_lens.saes.sae import get_pretrained_saes_directory\n"
        "assert 'andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts' in get_pretrained_saes_directory()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
