"""Held against a peer: interp-engine (Neuronpedia's engine, its eager CPU backend) as the oracle for
our op on the real SmolLM2-135M, float32, the same token ids, greedy.

Each steering of ours (vector ``add``, lm-eval's ``clamp``, ``cap``, ``ablate``, ``norm_scaled_add``,
an SAE feature ``add`` by ``delta`` and a ``set`` by ``direction``) runs beside unsteered requests in one
batch of our engine and is compared with the steering that means the same in interp-engine (``AddSpec``,
``ProjectionCapSpec`` with min = max, ``ProjectionCapSpec``, ``AblateSpec``, ``NormScaledAddSpec``, the
decoder row added, the decoder direction capped at one value), and each vector action also with our own
literal formula (``vector_methods.literal``) hooked into the same HF model: the tokens are equal and each
token's log-probability agrees. Our SAE-feature readout equals interp-engine's capture of ``resid_post.L`` at the
same tokens followed by SAELens ``encode``, unsteered and under an ``add`` at that layer; our raw readout (the
residual rows themselves) equals that capture before ``encode``.

One engine (eager: the op's math is the point, not compilation) and one interp-engine model for the module.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
LAYER = 18
HOOK, POINT = f"blocks.{LAYER}.hook_resid_post", f"resid_post.{LAYER}"
MAX_TOKENS = 4
LOGPROB_TOL = 5e-4  # float32, vLLM's CPU kernels vs transformers' (measured worst: 3.7e-5)
READ_FEATURES = list(range(32))


@pytest.fixture(scope="module")
def real_dir():
    from reason_plugins.models import resolve_model

    return resolve_model(NAME)


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    """A random standard SAE whose features fire on real activations (as in test_real_model)."""
    from sae_lens_ext.training.tiny_saes import firing_sae

    sae = firing_sae("standard", HOOK, seed=0)
    path = tmp_path_factory.mktemp("peer_sae") / "standard"
    sae.save_model(str(path))
    return str(path), sae


@pytest.fixture(scope="module")
def peer(real_dir):
    from interp_engine import load_model

    return load_model(str(real_dir), backend="eager", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def engine(real_dir, sae):
    from vllm_patches.llm import SteeredLLM

    llm = SteeredLLM(NAME, saes=[{"sae": sae[0], "hook": HOOK}], raw_hooks=[HOOK], dtype="float32", max_model_len=256,
                     seed=0, enforce_eager=True, max_num_seqs=16)
    yield llm
    del llm


@pytest.fixture(scope="module")
def prompt(peer):
    return peer.tokenizer.apply_chat_template([{"role": "user", "content": "What is 17 + 5?"}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False)


def _peer_forward(peer, tokens, spec, generated: int):
    """interp-engine's greedy choice and log-probability at each of the last ``generated`` tokens of
    ``tokens``, in one forward under ``spec`` (a SteeringSpec or None): the argmax at every position
    equal to our token is the same as its greedy generation writing our tokens, at one forward instead
    of one per token."""
    from interp_engine import capture as peer_capture
    from interp_engine import steer

    with steer(peer, spec) if spec is not None else _nothing():
        logits = peer_capture(peer, list(tokens), [POINT]).output.logits[0].double()
    rows = logits[len(tokens) - generated - 1:-1]
    logprobs = torch.log_softmax(rows, -1)
    return rows.argmax(-1).tolist(), [float(logprobs[i, t]) for i, t in enumerate(tokens[-generated:])]


def _literal_forward(hf_model, tokens, spec: dict, generated: int):
    """Our literal reference: the vector action's formula (``vector_methods.literal``, float64) applied to
    the HF decoder layer's output by a forward hook; the argmax and log-probabilities as in ``_peer_forward``."""
    from reason_plugins.spec import parse_vector_spec
    from reason_plugins.vector_methods import literal

    parsed = parse_vector_spec(spec)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = literal(hidden, parsed).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = hf_model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = hf_model(torch.tensor([list(tokens)])).logits[0].double()
    finally:
        handle.remove()
    rows = logits[len(tokens) - generated - 1:-1]
    logprobs = torch.log_softmax(rows, -1)
    return rows.argmax(-1).tolist(), [float(logprobs[i, t]) for i, t in enumerate(tokens[-generated:])]


def _cases(peer, prompt, sae):
    """(name, our spec, interp-engine's SteeringSpec): the same intervention in each engine's words."""
    from interp_engine import AblateSpec, AddSpec, NormScaledAddSpec, ProjectionCapSpec, SteeringSpec
    from interp_engine import capture as peer_capture

    torch.manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(576), dim=0)
    resid = next(iter(peer_capture(peer, list(prompt), [POINT]).tensors.values()))[0]
    mean_dir = resid[1:].mean(0)  # a direction the residual really has, for ablate (BOS left out)
    row = sae.W_dec.detach()
    vec = v.tolist()

    def ours(**fields):
        return {"vector": fields.pop("vector", vec), "hook": HOOK, **fields}

    def theirs(op):
        return SteeringSpec.at(POINT, op)

    def feature(edit, method):
        return {"sae": "SAE", "hook": HOOK, "method": method, "edits": [edit]}

    return [
        ("add", ours(coefficient=120.0), theirs(AddSpec(vector=v, scale=120.0))),
        ("clamp", ours(action="clamp", coefficient=150.0), theirs(ProjectionCapSpec(vector=v, min=150.0, max=150.0))),
        ("cap", ours(action="cap", min=150.0, max=200.0), theirs(ProjectionCapSpec(vector=v, min=150.0, max=200.0))),
        ("ablate", ours(vector=mean_dir.tolist(), action="ablate"), theirs(AblateSpec(vector=mean_dir))),
        ("norm_scaled_add", ours(action="norm_scaled_add", coefficient=0.5), theirs(NormScaledAddSpec(vector=v, strength=0.5))),
        ("norm_scaled_add capped", ours(vector=(2 * v).tolist(), action="norm_scaled_add", coefficient=3.0, max_fraction=0.6),
         theirs(NormScaledAddSpec(vector=2 * v, strength=3.0, max_fraction=0.6))),
        ("feature add (delta)", feature({"feature": 3, "mode": "add", "value": 150.0}, "delta"),
         theirs(AddSpec(vector=row[3], scale=150.0))),
        ("feature set (direction)", feature({"feature": 5, "mode": "set", "value": 200.0}, "direction"),
         theirs(ProjectionCapSpec(vector=row[5], min=200.0, max=200.0))),
    ]


def test_steering_equals_interp_engine(engine, peer, prompt, sae):
    from vllm import SamplingParams

    path, model = sae
    cases = [(name, {**spec, "sae": path} if spec.get("sae") == "SAE" else spec, theirs)
             for name, spec, theirs in _cases(peer, prompt, model)]
    steering = tuple([spec] for _, spec, _ in cases) + (None,)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=1, ignore_eos=True)
    outs = engine.generate([{"prompt_token_ids": list(prompt)}] * len(steering), params, steering=steering)
    plain = list(outs[-1].outputs[0].token_ids)
    assert _peer_forward(peer, list(prompt) + plain, None, MAX_TOKENS)[0] == plain
    changed, worst, literal_worst = [], 0.0, 0.0
    for (name, spec, theirs), out in zip(cases, outs):
        tokens = list(out.outputs[0].token_ids)
        ours_lp = [step[t].logprob for step, t in zip(out.outputs[0].logprobs, tokens)]
        peer_tokens, peer_lp = _peer_forward(peer, list(prompt) + tokens, theirs, MAX_TOKENS)
        assert tokens == peer_tokens, name
        gap = max(abs(a - b) for a, b in zip(ours_lp, peer_lp))
        assert gap <= LOGPROB_TOL, (name, gap)
        worst = max(worst, gap)
        if "vector" in spec:  # and our own literal formula, hooked into the same HF model
            ref_tokens, ref_lp = _literal_forward(peer.hf_model, list(prompt) + tokens, spec, MAX_TOKENS)
            assert tokens == ref_tokens, name
            literal_worst = max(literal_worst, max(abs(a - b) for a, b in zip(ours_lp, ref_lp)))
            assert literal_worst <= LOGPROB_TOL, (name, literal_worst)
        changed += [name] if tokens != plain else []
    assert len(changed) == len(cases), changed  # strong enough to change what the model writes, or the parity says little
    print(f"peer parity: {len(cases)} steerings, tokens equal, worst log-prob gap {worst:.2e} (interp-engine), "
          f"{literal_worst:.2e} (our literal formulas on HF)")
    applied = engine.applied(outs)
    assert all(a and a["tokens"] > 0 for a in applied[:-1]) and applied[-1] is None


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "add"])
def test_readout_equals_interp_engine_capture_and_saelens_encode(engine, peer, prompt, sae, steered):
    from interp_engine import AddSpec, SteeringSpec, steer
    from interp_engine import capture as peer_capture
    from vllm import SamplingParams

    path, model = sae
    torch.manual_seed(2)
    v = torch.nn.functional.normalize(torch.randn(576), dim=0) * 40.0
    spec = [{"vector": v.tolist(), "hook": HOOK, "coefficient": 1.0}] if steered else None
    readout = {"sae": path, "hook": HOOK, "features": READ_FEATURES, "at": "after"}
    outs = engine.generate([{"prompt_token_ids": list(prompt)}], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
                           steering=spec, readout=readout)
    read = engine.readout(outs)[0]
    tokens = list(prompt) + list(outs[0].outputs[0].token_ids)
    assert list(read["token_ids"]) == tokens[:len(read["token_ids"])] and len(read["token_ids"]) == len(tokens) - 1
    with steer(peer, SteeringSpec.at(POINT, AddSpec(vector=v, scale=1.0))) if steered else _nothing():
        resid = next(iter(peer_capture(peer, tokens[:-1], [POINT]).tensors.values()))[0]
    with torch.no_grad():
        theirs = model.encode(resid)[:, READ_FEATURES]
    ours = torch.as_tensor(read["activations"])
    scale = theirs.abs().max()
    assert scale > 1.0 and (theirs > 0).sum() > 20  # features that really fire
    gap = float((ours - theirs).abs().max() / scale)
    assert gap <= 1e-4, gap
    # the raw rows at the same point (one readout per hook and request: a second request, the same greedy tokens)
    outs = engine.generate([{"prompt_token_ids": list(prompt)}], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
                           steering=spec, readout={"hook": HOOK, "raw": True, "at": "after"})
    raw = engine.readout(outs)[0]
    assert list(raw["token_ids"]) == tokens[:-1]
    rows = torch.as_tensor(raw["raw"], dtype=torch.float32)
    assert rows.shape == resid.shape
    raw_gap = float((rows - resid.float()).norm() / resid.float().norm())
    assert raw_gap <= 1e-5, raw_gap
    print(f"peer readout ({'add' if steered else 'unsteered'}): {ours.shape[0]} tokens x {ours.shape[1]} features, "
          f"worst gap {gap:.2e} of the largest activation; raw rows {tuple(rows.shape)} relative gap {raw_gap:.2e}")


def _nothing():
    from contextlib import nullcontext

    return nullcontext()
