"""The GPU check kit (``benchmarks/gpu_check.py``) in its ``--quick`` mode, on whatever device the
test machine has (CPU in CI): it runs end to end, its parity checks pass on the real op, and they
fail on a broken one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCH))


def test_quick_kit_runs_and_its_checks_pass(gpu_check, tmp_path, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out_json = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--quick", "--device", device, "--json", str(out_json), "--cache", str(tmp_path)]) == 0
    out = json.loads(out_json.read_text())
    assert out["mode"] == "quick" and out["parity_ok"] is True
    parity = out["graph_parity"]
    assert {(r["slots"], r["scenario"]) for r in parity} == {(s, c) for s in (1, 64) for c in ("steered", "unsteered", "mixed")}
    assert all(r["unsteered_rows_unchanged"] and r["max_rel_diff_vs_eager"] <= 2 ** -8 for r in parity)
    if device == "cpu":  # the same closure re-run: bit for bit
        assert all(r["graph_equals_eager"] and not r["captured"] for r in parity)
    else:
        assert all(r["captured"] for r in parity)
    assert {r["steered_rows"] for r in parity if r["scenario"] == "unsteered"} == {0}
    assert [(r["variant"], r["slots"]) for r in out["op_cost"]] == [("decoder layer", None), ("op, every row steered", 16),
                                                                    ("op, every row steered", 64)]
    assert all(r["ms"] > 0 for r in out["op_cost"])
    rs = out["reason_score"]
    assert rs["reference_blocks_total"] == 10 and rs["reference_blocks_timed"] == 3
    assert rs["block_sums_max_rel_diff"] < 1e-3 and rs["ratio"] > 0 and rs["ours_tokens_per_s"] > 0
    ro = out["readout"]
    assert len(ro["parity"]) == 2 and all(r["ok"] for r in ro["parity"]) and ro["features_ms"] > 0 and ro["top_k_ms"] > 0
    if device == "cpu":  # part e needs a lent GPU (and vLLM, and hotwire's carried wheel)
        assert out["hotwire"] == {"skipped": "no GPU"}
    printed = capsys.readouterr().out
    assert ("e. hotwire-vllm beside us: skipped: no GPU" in printed) == (device == "cpu")
    assert "12/12 replays OK" in printed and "extrapolated to all" in printed and "--quick" in printed
    assert "d. readout" in printed and "2/2 replays with buffers rewritten equal float64" in printed


def test_graph_parity_catches_a_wrong_op(gpu_check, monkeypatch):
    """An op whose arithmetic is off (the feature gate ignored) agrees with itself eagerly, but not
    with the float64 recomputation from its buffers: the check reports it."""
    import vllm_patches.engine.op as op_module

    def ungated(x, enc_t, bias, gate, dec, edit_a, edit_b, when_slot, when_on, when_above, *vector_extras):
        return torch.addcmul(edit_b, torch.addmm(bias, x, enc_t), edit_a) @ dec, x.new_zeros(x.shape[0])
    monkeypatch.setattr(op_module, "feature_gated_rows_delta", ungated)
    results = gpu_check.graph_parity(64, 8, (4,), torch.float32, "cpu", rounds=1)
    assert [r["scenario"] for r in results if not r["ok"]] == ["steered", "mixed"]  # unsteered rows add exactly 0
