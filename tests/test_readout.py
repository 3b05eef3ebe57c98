"""Feature readout without an engine: the ReadoutSpec contract and the one front-end check, the op's
reads held to SAELens's own ``encode`` for every architecture and normalisation we steer (in both op
paths, before and after a steering edit, in mixed batches), the book's dedupe / missing positions /
memory bound, and read slots admitted like steering slots. (``test_vllm_steering.py`` and
``test_vllm_load.py`` hold the engine, the server and the load to HF hooks.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reason_plugins.readout import parse_readout
from reason_plugins.spec import SpecError, parse_steering
from reason_plugins.steering import steer
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK
from tests.support.runtime_doubles import engine_request, engine_step, steering_runtime
from vllm_patches.engine.readout import to_lists

RTOL = 1e-4


# -- the contract -------------------------------------------------------------------------------
def test_readout_specs_parse_in_every_form():
    one = {"sae": "S", "hook": FIXTURE_HOOK, "features": [5, 2]}
    (spec,) = parse_readout(one)
    assert spec.features == (5, 2) and spec.top_k is None and spec.positions == "all" and spec.at == "after"
    assert parse_readout(json.dumps([one, {"sae": "S", "hook": "blocks.3.hook_resid_post", "top_k": 3, "at": "before",
                                           "positions": "output"}]))[1].top_k == 3
    assert parse_readout(None) == [] and parse_readout(spec.to_dict()) == [spec]


@pytest.mark.parametrize("bad, message", [
    ({"sae": "S", "hook": FIXTURE_HOOK}, "give one of 'features'.*not none of them"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "features": [1], "top_k": 2}, "not features and top_k"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "sums": {"job": "j", "bits": 2, "masks": [1, 4]}}, r"sums mask 4 is not an integer in 0..3"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "sums": {"job": "", "bits": 2, "masks": [1]}}, "sums 'job' must be a non-empty string"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "sums": {"job": "j", "bits": 63, "masks": [1]}}, "sums 'bits' must be at most 62"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "features": []}, "non-empty list"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "features": [3, 3]}, "listed twice"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "features": [-1]}, "each feature must be an integer >= 0, got -1"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "top_k": True}, "got True"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2, "positions": "middle"}, "positions 'middle' is not one of"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2, "at": "during"}, "at 'during' is not one of"),
    ({"sae": "S", "hook": "blocks.2.attn", "top_k": 2}, "hook 'blocks.2.attn' is not of the form"),
    ({"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2, "feature": 1}, r"unknown field\(s\) \['feature'\]"),
    ([{"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2}, {"sae": "T", "hook": FIXTURE_HOOK, "top_k": 1}], "read the same hook"),
    ("{not json", "readout is not valid JSON"),
    ([], "non-empty list"),
])
def test_bad_readout_specs_name_the_value(bad, message):
    with pytest.raises(SpecError, match=message):
        parse_readout(bad)


def _config(sae_dir, **sizes):
    from vllm_patches.config import parse_config

    return parse_config({"saes": [{"sae": str(sae_dir), "hook": FIXTURE_HOOK}], **sizes})


def test_the_front_end_refuses_what_the_worker_could_not_read(sae_dirs):
    from vllm_patches.frontend import SteeringRequestError, check_readout, prepare_request

    sae = str(sae_dirs["standard"])
    config = _config(sae, max_readout=3, max_top_k=8)
    ok = {"sae": sae, "hook": FIXTURE_HOOK, "features": [1, 255]}
    assert [s.features for s in check_readout(ok, config)] == [(1, 255)]
    cases = [
        ({**ok, "hook": "blocks.3.hook_resid_post"}, "no SAE .* is configured at 'blocks.3.hook_resid_post'"),
        ({**ok, "sae": "/elsewhere/sae"}, "no SAE '/elsewhere/sae'"),
        ({**ok, "features": [256]}, r"feature index 256 is out of range: SAE .* has d_sae=256 \(valid: 0..255\)"),
        ({**ok, "features": [1, 2, 3, 4]}, "lists 4 features; this engine reads at most max_readout=3"),
        ({"sae": sae, "hook": FIXTURE_HOOK, "top_k": 257}, r"top_k 257 is out of range: .* d_sae=256 \(valid: 1..256\)"),
        ({"sae": sae, "hook": FIXTURE_HOOK, "top_k": 9}, "top_k 9 exceeds this engine's max_top_k=8"),
    ]
    for bad, message in cases:
        with pytest.raises(SpecError, match=message):
            check_readout(bad, config)
    with pytest.raises(SpecError, match="top_k readout .* replays CUDA graphs: start it with enforce_eager"):
        check_readout({"sae": sae, "hook": FIXTURE_HOOK, "top_k": 2}, config, graphs=True)
    assert check_readout(ok, config, graphs=True)  # listed features read inside captured graphs too
    with pytest.raises(SpecError, match="readout off"):
        check_readout(ok, _config(sae, max_readout=0, max_top_k=0))
    with pytest.raises(SpecError, match="without a steering config"):
        check_readout(ok, None)
    # through the request path: a 400 naming the readout, and the prefix-cache salt
    params = SimpleNamespace(extra_args={"readout": {**ok, "features": [999]}})
    with pytest.raises(SteeringRequestError, match="feature index 999") as err:
        prepare_request(params, config, "req-1")
    assert err.value.parameter == "readout"
    reads_prompt = SimpleNamespace(extra_args={"readout": ok})
    assert prepare_request(reads_prompt, config, "req-1").endswith("readout:req-1")  # its own prompt, computed
    assert json.loads(reads_prompt.extra_args["readout"])[0]["features"] == [1, 255]  # normalised for the worker
    outputs_only = SimpleNamespace(extra_args={"readout": {**ok, "positions": "output"}})
    assert prepare_request(outputs_only, config, "req-2") is None  # output rows are always computed: caching stays


# -- the op against SAELens ---------------------------------------------------------------------
@pytest.fixture(params=["fused", "opaque"])
def op_path(request, monkeypatch):
    monkeypatch.setenv("REASON_STEERING_FUSED", "1" if request.param == "fused" else "0")
    return request.param


def _gated_sae(tmp_path):
    from sae_lens import GatedSAE, GatedSAEConfig

    torch.manual_seed(0)
    sae = GatedSAE(GatedSAEConfig(d_in=128, d_sae=256))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_gate, sae.b_mag, sae.r_mag):
            p.normal_(0, 0.2)
    sae.cfg.metadata.hook_name = FIXTURE_HOOK
    sae.save_model(str(tmp_path / "gated"))
    return tmp_path / "gated"


def _sae_dir(kind, sae_dirs, tmp_path):
    if kind in ("standard", "topk", "jumprelu"):
        return sae_dirs[kind]
    if kind == "gated":
        return _gated_sae(tmp_path)
    if kind == "sparsify":
        from tests.support.sae_folders import write_sparsify_folder

        write_sparsify_folder(tmp_path / "layers.2")  # the hookpoint folder of blocks.2.hook_resid_post
        return tmp_path / "layers.2"
    from tests.support.sae_folders import normalised_copy

    return normalised_copy(sae_dirs["standard"], tmp_path / kind, kind)


def _positions(requests, order, counts):
    pos = []
    for req_id, n in zip(order, counts):
        start = requests[req_id].num_computed_tokens
        pos.extend(range(start, start + n))
    return torch.tensor(pos)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "gated", "sparsify", "expected_average_only_in",
                                  "constant_norm_rescale", "layer_norm"])
def test_reads_equal_saelens_encode_before_and_after_an_edit_in_a_mixed_batch(kind, sae_dirs, tmp_path, op_path):
    from reason_plugins.saes import load_sae
    from reason_plugins.steering import needs_full_sae, sae_architecture, sae_normalisation

    sae_dir = _sae_dir(kind, sae_dirs, tmp_path)
    sae = load_sae(str(sae_dir)).eval()
    runtime = steering_runtime(sae_dir)
    op = next(iter(runtime.ops.values()))
    assert op.read_full == needs_full_sae(sae_architecture(sae), sae_normalisation(sae))
    method = "reconstruct" if op.sae is not None else "delta"
    steering = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "method": method, "edits": [{"feature": 7, "mode": "set", "value": 6.0}]}
    reads = {"after": {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "features": [7, 0, 130]},
             "before": {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "features": [7, 130], "at": "before"},
             "top": {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "top_k": 5, "positions": "output"}}
    requests = {"s_after": engine_request("s_after", steering, 4, 0), "plain": engine_request("plain", None, 3, 0),
                "s_before": engine_request("s_before", steering, 3, 0), "r_top": engine_request("r_top", None, 2, 1),
                "r_only": engine_request("r_only", None, 2, 0)}
    for req_id, spec in (("s_after", reads["after"]), ("s_before", reads["before"]), ("r_top", reads["top"]),
                         ("r_only", reads["after"])):
        requests[req_id].sampling_params.extra_args["readout"] = json.dumps(spec)
    runtime.admit(requests.values())
    order, counts = ["s_after", "plain", "s_before", "r_top", "r_only"], [4, 3, 3, 2, 2]
    with torch.no_grad():
        hidden, residual, out = engine_step(runtime, requests, order, counts)
        runtime.harvest(_positions(requests, order, counts), torch.arange(100, 114))
        before, after = sae.encode(hidden + residual), sae.encode(out + residual)
        expected_steered = steer(hidden + residual, sae, parse_steering(steering)[0]) - residual
    # reading never changes what the model computes: steered rows as steering alone, the rest untouched
    torch.testing.assert_close(out[0:4], expected_steered[0:4], rtol=RTOL, atol=1e-4)
    assert torch.equal(out[4:7], hidden[4:7]) and torch.equal(out[10:14], hidden[10:14])
    got = to_lists(runtime.book.results())

    def close(ours, ref):
        ref = np.asarray(ref, dtype=np.float32)
        np.testing.assert_allclose(np.asarray(ours, dtype=np.float32), ref, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(ref).max())))

    close(got["s_after"][FIXTURE_HOOK]["activations"], after[0:4][:, [7, 0, 130]])
    close(got["s_before"][FIXTURE_HOOK]["activations"], before[7:10][:, [7, 130]])
    close(got["r_only"][FIXTURE_HOOK]["activations"], after[12:14][:, [7, 0, 130]])
    top = got["r_top"][FIXTURE_HOOK]["top_k"]  # r_top: prompt of 2, 1 computed: row 10 is prompt, row 11 output
    assert got["r_top"][FIXTURE_HOOK]["positions"] == [2] and got["r_top"][FIXTURE_HOOK]["token_ids"] == [111]
    ref_top = after[11:12].topk(5)
    close(top["values"], ref_top.values)
    assert np.array_equal(np.sort(top["indices"][0]), np.sort(ref_top.indices[0].numpy()))  # ties may swap order
    assert got["s_after"][FIXTURE_HOOK]["positions"] == [0, 1, 2, 3] and got["s_after"][FIXTURE_HOOK]["token_ids"] == [100, 101, 102, 103]
    assert "plain" not in got and got["r_only"][FIXTURE_HOOK]["missing_positions"] == []


def test_idle_ops_read_nothing_and_buffers_are_never_touched(standard_sae, op_path):
    sae_dir, _ = standard_sae
    runtime = steering_runtime(sae_dir)
    op = next(iter(runtime.ops.values()))
    op.r_enc_t.fill_(float("nan"))  # any read over the buffers would poison r_vals
    requests = {"u": engine_request("u", None, 3, 0)}
    runtime.admit(requests.values())
    hidden, _, out = engine_step(runtime, requests, ["u"], [3])
    assert op.read_plan == (None, None) and torch.equal(out, hidden) and not torch.isnan(op.r_vals).any()
    runtime.harvest(torch.arange(3), torch.arange(3))  # nothing planned: nothing filed
    assert runtime.book.results() == {}


# -- the book -----------------------------------------------------------------------------------
def _book_request(spec, keep_bytes=1 << 20):
    from vllm_patches.engine.readout import ReadoutBook

    book = ReadoutBook(keep_bytes)
    (parsed,) = parse_readout(spec)
    return book, parsed


def test_a_recomputed_position_keeps_its_last_reading_and_uncomputed_ones_are_listed(sae_dirs):
    spec = {"sae": "S", "hook": FIXTURE_HOOK, "features": [4], "positions": "all"}
    book, parsed = _book_request(spec)
    book.admit("r", [parsed])
    key = parsed.key
    vals = np.arange(10, dtype=np.float32)[:, None]
    # a prefix-cache hit skipped positions 0-1; then positions 2..5, preempted, recomputed from 2..6
    book.harvest([("r", 0, 4, 5, [(key, parsed, 0, 4, [0])])], np.array([2, 3, 4, 5]), np.array([12, 13, 14, 15]),
                 {key: (vals, None, None)})
    book.harvest([("r", 0, 5, 5, [(key, parsed, 0, 5, [0])])], np.array([2, 3, 4, 5, 6]), np.array([12, 13, 14, 15, 16]),
                 {key: (vals + 100, None, None)})
    book.finish("r")
    result = to_lists(book.results())["r"][FIXTURE_HOOK]
    assert result["positions"] == [2, 3, 4, 5, 6] and result["token_ids"] == [12, 13, 14, 15, 16]
    assert [row[0] for row in result["activations"]] == [100, 101, 102, 103, 104]  # the recomputed reading wins
    assert result["missing_positions"] == [0, 1]  # asked, never computed: listed, not dropped


def test_finished_readouts_are_evicted_oldest_first_past_the_bound_and_say_so():
    spec = {"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2}
    book, parsed = _book_request(spec, keep_bytes=600)
    key = parsed.key
    for i in range(4):
        book.admit(f"req-{i}", [parsed])
        book.harvest([(f"req-{i}", 0, 8, 1, [(key, parsed, 0, 8, None)])], np.arange(8), np.arange(8),
                     {key: (None, np.ones((8, 2), np.float32), np.ones((8, 2), np.int64))})
        book.finish(f"req-{i}")
    assert book.held_bytes <= 600 and list(book.finished) == ["req-3"]
    assert book.results(["req-0"]) == {"req-0": {"evicted": True}}
    assert to_lists(book.find(["req-3"]))["req-3"][FIXTURE_HOOK]["top_k"]["values"] == [[1.0, 1.0]] * 8
    assert book.find(["nobody"]) == {}


# -- admission ------------------------------------------------------------------------------------
def test_listed_features_take_read_slots_and_top_k_takes_none():
    from vllm_patches.config import parse_config
    from vllm_patches.engine.admission import fits, slots_of

    config = parse_config({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_readout": 3})
    params = SimpleNamespace(extra_args={"readout": json.dumps([{"sae": "S", "hook": FIXTURE_HOOK, "features": [1, 2]}])})
    needed = slots_of(params)
    assert needed == {(FIXTURE_HOOK, "read"): frozenset({(1,), (2,)})}  # one op per layer: the hook names it
    assert fits({(FIXTURE_HOOK, "read"): {(2,), (3,)}}, needed, config)  # 1, 2, 3: fits in 3
    assert not fits({(FIXTURE_HOOK, "read"): {(4,), (5,)}}, needed, config)  # 1, 2, 4, 5: waits
    top = SimpleNamespace(extra_args={"readout": json.dumps({"sae": "S", "hook": FIXTURE_HOOK, "top_k": 50})})
    assert slots_of(top) == {}


def test_a_later_choice_of_n_takes_the_prompt_rows_its_sibling_computed():
    """vLLM runs the choices of ``n > 1`` as ``0_<id>``, ``1_<id>`` sharing one cache salt: the second
    is served the first's prompt blocks, and its readout takes those rows from the first's readings."""
    spec = {"sae": "S", "hook": FIXTURE_HOOK, "features": [4]}
    book, parsed = _book_request(spec)
    key = parsed.key
    vals = np.arange(20, dtype=np.float32)[:, None]
    for req_id in ("0_cmpl-7", "1_cmpl-7"):
        book.admit(req_id, [parsed])
    # step 1: the first choice computes the prompt (positions 0..3); step 2: each choice decodes position 4
    book.harvest([("0_cmpl-7", 0, 4, 4, [(key, parsed, 0, 4, [0])])], np.arange(4), np.arange(10, 14), {key: (vals, None, None)})
    book.harvest([("0_cmpl-7", 0, 1, 4, [(key, parsed, 0, 1, [0])]), ("1_cmpl-7", 1, 2, 4, [(key, parsed, 1, 2, [0])])],
                 np.array([4, 4]), np.array([50, 60]), {key: (vals + 100, None, None)})
    book.finish("1_cmpl-7")
    second = to_lists(book.find(["cmpl-7"]))["1_cmpl-7"][FIXTURE_HOOK]
    assert second["positions"] == [0, 1, 2, 3, 4] and second["token_ids"] == [10, 11, 12, 13, 60]
    assert [r[0] for r in second["activations"]] == [0, 1, 2, 3, 101] and second["missing_positions"] == []
