"""A real ``vllm serve`` with our plugin, fuzzed at the front door (loopback only, bounded in requests and time).

One server (the tiny Llama fixture, the fixture SAE at layer 2, vectors alone at layer 1, a registered
vector ``up``, an ``allowed_vector_dir``, small bounds, ``--api-key``) serves every test here:

- 2,000 requests from Hypothesis (seeded): valid steering / vector / condition / readout specs, mutated
  (wrong types, lists for strings, huge and non-finite numbers, server paths, deep nesting, unicode, broken
  JSON text, oversized fields), sent from 8 threads with 1-2 tokens each: every answer is 200 or a 400 with a
  message (never a 5xx, never a hang), the server lives, its memory stays bounded, nothing reached the
  front-end's safety net, and a plain greedy request afterwards equals the one taken before;
- a path a client sends gets the same 400 body whether the file exists or not, echoing nothing from it; a
  registered name steers exactly as its numbers do;
- clients that disconnect mid-stream while steered and reading leave no slot held (the scheduler's gauges and
  the worker's state, ``reason_steering_stats``, return to zero) and ``GET /v1/features/{id}`` answers;
- ``/v1/steering/{id}`` and ``/v1/features/{id}`` stay behind ``--api-key``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.serve import tree_rss_mb, vllm_server

pytestmark = pytest.mark.slow

KEY = "fuzz-key"
SAE_HOOK = "blocks.2.hook_resid_post"
VECTOR_HOOK = "blocks.1.hook_resid_post"
WIDTH, D_SAE = 128, 256
N_REQUESTS, BATCH, THREADS = 2000, 50, 8
PROMPT = "What is 17 + 5? Let me think"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("serve_files")
    (root / "operator").mkdir(), (root / "allowed").mkdir()
    up = torch.randn(WIDTH, generator=torch.Generator().manual_seed(11)) * 4
    save_file({VECTOR_HOOK: up}, str(root / "operator" / "up.safetensors"))
    save_file({VECTOR_HOOK: -up}, str(root / "allowed" / "in.safetensors"))
    return {"root": root, "up": up, "registered": str(root / "operator" / "up.safetensors"), "allowed": str(root / "allowed")}


@pytest.fixture(scope="module")
def payloads(sae_dirs):
    """The fuzz payloads, generated in a thread while the server starts (a future)."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_fuzz_requests, str(sae_dirs["standard"]))


@pytest.fixture(scope="module")
def server(llama_dir, sae_dirs, files, payloads, tmp_path_factory):
    config = {"saes": [{"sae": str(sae_dirs["standard"]), "hook": SAE_HOOK}], "vector_hooks": [VECTOR_HOOK],
              "max_edits": 4, "max_slots": 8, "max_readout": 8, "max_top_k": 8, "vectors": {"up": files["registered"]},
              "allowed_vector_dir": files["allowed"], "max_vector_file_mb": 1, "max_spec_bytes": 65536, "max_specs": 8}
    log = tmp_path_factory.mktemp("fuzz_server") / "server.log"
    with vllm_server(llama_dir, config, log, "--api-key", KEY, env={"VLLM_SERVER_DEV_MODE": "1"}) as (base, proc):
        yield base, proc, log


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


def _complete(http, xargs=None, max_tokens=2, **extra):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "return_token_ids": True, **extra}
    if xargs:
        body["vllm_xargs"] = xargs
    # encoded here: JSON text the way any client may send it (a lone surrogate escaped as \ud800), which httpx refuses to build
    return http.post("/v1/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})


def _stats(http) -> dict:
    response = http.post("/collective_rpc", json={"method": "reason_steering_stats"})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_the_report_routes_stay_behind_the_api_key(server, http, sae_dirs):
    import httpx

    out = _complete(http, {"readout": json.dumps({"sae": str(sae_dirs["standard"]), "hook": SAE_HOOK, "features": [1, 2]})})
    assert out.status_code == 200, out.text
    request_id = out.json()["id"]
    for route in ("steering", "features"):
        assert httpx.get(f"{server[0]}/v1/{route}/{request_id}", timeout=30).status_code == 401
        assert httpx.get(f"{server[0]}/v1/{route}/{request_id}", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert http.get(f"/v1/{route}/{request_id}").status_code == 200
    assert httpx.post(f"{server[0]}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30).status_code == 401


def test_a_client_path_gets_one_body_for_a_missing_and_an_existing_file_and_a_name_steers_as_its_numbers(server, http, files):
    import torch
    from safetensors.torch import save_file

    secret = files["root"] / "secret.safetensors"  # outside allowed_vector_dir
    spec = {"vector": str(secret), "hook": VECTOR_HOOK, "coefficient": 1.0}
    missing = _complete(http, {"steering": json.dumps(spec)})
    save_file({"model.private_tensor_name": torch.ones(WIDTH)}, str(secret))
    existing = _complete(http, {"steering": json.dumps(spec)})
    assert missing.status_code == existing.status_code == 400 and missing.content == existing.content
    message = existing.json()["error"]["message"]
    # what the client sent (vLLM's error handler writes server paths as <path>), the registered names, nothing from the file
    assert (str(secret) in message or "vector '<path>'" in message) and "['up']" in message
    assert "private_tensor_name" not in message and "exist" not in message
    plain = _complete(http, max_tokens=8).json()["choices"][0]["token_ids"]
    named = _complete(http, {"steering": json.dumps({"vector": "up", "hook": VECTOR_HOOK, "coefficient": 3.0})}, max_tokens=8)
    inline = _complete(http, {"steering": json.dumps({"vector": files["up"].tolist(), "hook": VECTOR_HOOK, "coefficient": 3.0})},
                       max_tokens=8)
    admitted = _complete(http, {"steering": json.dumps({"vector": "in.safetensors", "hook": VECTOR_HOOK, "coefficient": -3.0})},
                         max_tokens=8)
    assert named.status_code == inline.status_code == admitted.status_code == 200, (named.text, inline.text, admitted.text)
    tokens = [r.json()["choices"][0]["token_ids"] for r in (named, inline, admitted)]
    assert tokens[0] == tokens[1] == tokens[2] != plain  # in.safetensors holds -up: -3 x -up = 3 x up
    hashes = [rec["spec_hash"] for r in (named, inline) for rec in http.get(f"/v1/steering/{r.json()['id']}").json()["requests"].values()]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # the same vector, applied the same way
    for escape in ("../secret.safetensors", str(secret)):
        refused = _complete(http, {"steering": json.dumps({**spec, "vector": escape})})
        assert refused.status_code == 400 and "not served here" in refused.json()["error"]["message"]


def _fuzz_requests(sae: str):
    """N_REQUESTS payloads from Hypothesis, seeded (the same ones on every run)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.support.spec_fuzz import request_xargs

    batches = []

    @settings(max_examples=N_REQUESTS // BATCH, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(request_xargs(sae, SAE_HOOK, VECTOR_HOOK, WIDTH, D_SAE), min_size=BATCH, max_size=BATCH))
    def collect(batch):
        batches.append(batch)

    collect()
    return [xargs for batch in batches for xargs in batch]


def test_fuzzed_specs_get_a_200_or_a_400_and_the_server_serves_on_unchanged(server, http, payloads):
    import httpx

    baseline = _complete(http, max_tokens=8).json()["choices"][0]["token_ids"]
    payloads = payloads.result(timeout=300)
    assert len(payloads) >= 2000
    rss_before = tree_rss_mb(server[1].pid)

    def send(xargs):
        try:
            response = _complete(http, xargs, max_tokens=1 + len(str(xargs)) % 2)
        except httpx.HTTPError as exc:  # a hang or a dropped connection
            return "error", f"{type(exc).__name__}: {exc}", xargs
        message = response.json().get("error", {}).get("message") if response.status_code != 200 else None
        return response.status_code, message, xargs

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(send, payloads))
    seconds = time.monotonic() - started
    rss_after = tree_rss_mb(server[1].pid)
    counts = Counter(status for status, _, _ in results)
    print(f"\nfuzz: {len(results)} requests in {seconds:.0f} s: {dict(counts)}; server RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    bad = [(status, message, json.dumps(xargs)[:300]) for status, message, xargs in results
           if status not in (200, 400) or (status == 400 and not message)]
    assert not bad, bad[:5]
    assert counts[200] >= 100 and counts[400] >= 500  # both kinds of answer are exercised
    assert server[1].poll() is None and http.get("/health").status_code == 200
    assert rss_after - rss_before < 512, (rss_before, rss_after)
    assert _complete(http, max_tokens=8).json()["choices"][0]["token_ids"] == baseline
    log = server[2].read_text()
    assert "unexpected" not in log and "EngineDeadError" not in log and "Traceback" not in log


def test_clients_that_disconnect_mid_stream_leave_no_slot_held(server, http, sae_dirs):
    sae = str(sae_dirs["standard"])
    streams, max_tokens = 6, 200

    def xargs(i):
        return {"steering": json.dumps({"sae": sae, "hook": SAE_HOOK, "edits": [{"feature": 10 + i, "mode": "set", "value": 20.0}]}),
                "readout": json.dumps({"sae": sae, "hook": SAE_HOOK, "features": [i, 100 + i]})}

    during = {}

    def stream_and_drop(i):
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                "vllm_xargs": xargs(i)}
        request_id, chunks = None, 0
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    request_id = json.loads(line[6:])["id"]
                    chunks += 1
                    if i == 0 and chunks == 1:  # the gauges while streams run (and this one is mid-generation)
                        during.update(_stats(http))
                    if chunks >= 2:
                        break  # leaving the block closes the connection mid-stream
        return request_id

    with ThreadPoolExecutor(streams) as pool:
        ids = list(pool.map(stream_and_drop, range(streams)))
    assert all(ids)
    assert during["slots_in_use"] >= 1 and during["read_slots_in_use"] >= 2 and during["worker_held"]["steered"] >= 1, during
    time.sleep(2)  # the server notices the closed connections and aborts the requests
    assert _complete(http, max_tokens=2).status_code == 200  # one more engine step, after the aborts
    stats = _stats(http)
    assert stats["slots_in_use"] == 0 and stats["read_slots_in_use"] == 0, stats
    assert stats["worker_held"] == {"steered": 0, "reading": 0, "numbers": 0}, stats
    for request_id in ids:
        features = http.get(f"/v1/features/{request_id}")
        assert features.status_code in (200, 404), features.text  # what was read, or why there is nothing
        if features.status_code == 200:
            (rec,) = features.json()["requests"].values()
            assert rec[SAE_HOOK]["positions"] and len(rec[SAE_HOOK]["activations"][0]) == 2
        report = http.get(f"/v1/steering/{request_id}").json()
        (rec,) = report["requests"].values()
        assert report["steered"] and 0 < rec["tokens"] < max_tokens, report  # steered, and cut short by the disconnect
    assert server[1].poll() is None
