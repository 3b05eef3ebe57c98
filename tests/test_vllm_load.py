"""Steering under real traffic, end to end: one engine through ``LLM``'s engine loop, then
``vllm serve`` (the console script, as the README documents it) driven by the official ``openai``
client from concurrent threads — loopback only, bounded in requests and time.

The load: 200 requests, 64 distinct (layer, feature) edits over two layers with a catalogue of 4
slots per layer (so the scheduler must hold requests back), unsteered requests mixed in, some with
``n=2``, some aborted mid-generation, a KV cache of 24 blocks of 32 tokens (preemption), prefix
caching on, prompts up to ~150 tokens through 64-token chunked prefill. One steered request in six
carries a steering vector instead (16 distinct, add or clamp, at an SAE layer where they share the
feature slots, or at a layer with no SAE), some of them beside a feature edit; one in seven edits only
under a condition (a window of generated tokens, a feature gate, or the think section of a prompt
holding a ``<think>`` tag). One request in five also
reads SAE features (listed ones, over 64 distinct among them with a read catalogue of 8 per layer,
or a top-k; prompt, output or all positions; before or after its own edit). Pass: no engine death;
every steered request reported with its spec hash and token count; a sample of greedy outputs
equal to the HF-hook reference; unsteered outputs bit-identical to a plain engine's; every readout
whole (no position it asked for missing) and a sample equal to HF hooks + SAELens ``encode``; bad
specs and readouts get HTTP 400 and the server keeps serving; the HTTP report
(``GET /v1/steering/{id}``) says what was applied and ``GET /v1/features/{id}`` what was read.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from reason_plugins.spec import parse_steering, specs_hash
from tests.support.references import hf_greedy
from tests.support.serve import vllm_server
from tests.support.vllm_jobs import run_job

pytestmark = pytest.mark.slow

HOOKS = ("blocks.2.hook_resid_post", "blocks.3.hook_resid_post")
N_REQUESTS = 200
MAX_SLOTS = 4
MAX_READOUT = 8
ENGINE = {"dtype": "float32", "max_model_len": 256, "seed": 0, "enforce_eager": True, "max_num_seqs": 16,
          "max_num_batched_tokens": 64, "enable_prefix_caching": True, "block_size": 32, "num_gpu_blocks_override": 24}
WORDS = "wait let me check the sum of seventeen and five hmm maybe alternatively therefore however but another".split()


VECTOR_HOOK = "blocks.1.hook_resid_post"  # no SAE there: vectors alone


def _steering_config(layer_saes):
    return {"saes": [{"sae": str(layer_saes[h][1]), "hook": h} for h in HOOKS], "max_edits": 2, "max_slots": MAX_SLOTS,
            "max_readout": MAX_READOUT, "max_top_k": 8, "vector_hooks": [VECTOR_HOOK]}


def _vector(k: int) -> dict:
    """One of 16 distinct vectors: even k add at the vector-only layer, odd k clamp at the first SAE layer."""
    import torch

    v = torch.randn(128, generator=torch.Generator().manual_seed(100 + k)).tolist()
    if k % 2 == 0:
        return {"vector": v, "hook": VECTOR_HOOK, "coefficient": 4.0 + k}
    return {"vector": v, "hook": HOOKS[0], "action": "clamp", "coefficient": float(k)}


def _spec(layer_saes, hook, feature, value=25.0, mode="set"):
    return {"sae": str(layer_saes[hook][1]), "hook": hook, "method": "delta",
            "edits": [{"feature": feature, "mode": mode, "value": value}]}


@pytest.fixture(scope="module")
def load_requests(tokenizer, layer_saes):
    """200 requests, deterministic: 1 in 4 unsteered, 64 distinct (layer, feature) edits, some on both
    layers, some n=2, some aborted; half the prompts share a 40-token prefix."""
    rng = random.Random(0)
    shared = tokenizer(" ".join(rng.choice(WORDS) for _ in range(40)), add_special_tokens=False)["input_ids"][:40]
    requests = []
    for i in range(N_REQUESTS):
        n_words = rng.choice([8, 20, 60, 140])  # the longest run through several prefill chunks
        ids = tokenizer(" ".join(rng.choice(WORDS) for _ in range(n_words)), add_special_tokens=False)["input_ids"]
        prompt = ((shared if i % 2 else []) + ids)[:200]
        steering = None
        if i % 4:
            hook = HOOKS[i % 2]
            spec = _spec(layer_saes, hook, (i * 7) % 37 if hook == HOOKS[0] else (i * 5) % 31)
            steering = [spec, _spec(layer_saes, HOOKS[1], 3, 12.0, "add")] if i % 9 == 1 and hook == HOOKS[0] else spec
            if i % 6 == 5:  # a steering vector instead, or beside a feature edit at another layer
                vector = _vector((i // 6) % 16)
                steering = [vector, _spec(layer_saes, HOOKS[1], 5, 20.0)] if i % 12 == 11 else vector
            elif i % 7 == 2:  # only under a condition
                kind = (i // 7) % 3
                cond = ({"from_token": 2, "to_token": 9}, {"when": {"feature": 3, "above": 0.0}}, {"only_in": "think"})[kind]
                steering = {**(steering if isinstance(steering, dict) else steering[0]), **cond}
                if kind == 2:
                    think_open = tokenizer.convert_tokens_to_ids("<think>")
                    prompt = prompt[:len(prompt) // 2] + [think_open] + prompt[len(prompt) // 2:]
        readout = None
        if i % 5 == 0:
            hook = HOOKS[(i // 5) % 2]
            readout = {"sae": str(layer_saes[hook][1]), "hook": hook, "positions": ("all", "output", "prompt")[(i // 5) % 3],
                       "at": ("after", "before")[(i // 10) % 2]}
            readout.update({"top_k": 4} if i % 15 == 0 else {"features": [(i * 7 + k * 61) % 251 for k in range(3)]})
        requests.append({"id": f"req-{i}", "prompt_token_ids": prompt, "steering": steering, "readout": readout,
                         "max_tokens": 40 if i % 23 == 5 else 12, "n": 2 if i % 17 == 3 else 1,
                         "abort_after": 3 if i % 23 == 5 else None})
    distinct = {(s["hook"], e["feature"]) for r in requests if r["steering"]
                for s in ([r["steering"]] if isinstance(r["steering"], dict) else r["steering"]) for e in s.get("edits", ())}
    assert len(distinct) >= 60 and len({h for h, _ in distinct}) == 2
    vectors = {json.dumps(s["vector"][:2]) for r in requests if r["steering"]
               for s in ([r["steering"]] if isinstance(r["steering"], dict) else r["steering"]) if "vector" in s}
    assert len(vectors) == 16
    read = {(r["readout"]["hook"], f) for r in requests if r["readout"] for f in r["readout"].get("features", ())}
    assert len(read) > 64 and any(r["readout"] and "top_k" in r["readout"] for r in requests)
    assert any(r["readout"] and r["n"] == 2 for r in requests) and any(r["readout"] and r["abort_after"] for r in requests)
    return requests


def _conditioned(request) -> bool:
    return any(k in json.dumps(request["steering"]) for k in ('"from_token"', '"only_in"', '"when"'))


def _hash(steering):
    return specs_hash(parse_steering(steering))


def _check_reports(requests, records_of, outputs, aborted):
    """Every steered request reported with its spec hash and (at least) the tokens it ran."""
    for r in requests:
        recs = records_of(r["id"])
        if r["steering"] is None:
            assert not recs, r["id"]
            continue
        assert len(recs) == r["n"], (r["id"], recs)
        for rec in recs:
            assert rec["spec_hash"] == _hash(r["steering"]) and "error" not in rec, r["id"]
            # prompt tokens served from the (spec-salted) prefix cache are not run again, and
            # preempted requests run theirs twice: the generated ones are always there (unless a condition holds them)
            if _conditioned(r):
                assert rec["tokens"] <= len(r["prompt_token_ids"]) + r["max_tokens"] - 1 + 64, r["id"]
                continue
            if r["id"] not in aborted:
                assert rec["tokens"] >= len(outputs[r["id"]][0]) - 1, r["id"]
                assert rec["mean_abs_delta"] > 0, r["id"]
            assert rec["tokens"] > 0, r["id"]


@pytest.fixture(scope="module")
def engine_run(llama_dir, layer_saes, load_requests, tmp_path_factory):
    job = {"model": str(llama_dir), "engine": ENGINE, "steering": _steering_config(layer_saes), "requests": load_requests}
    started = time.monotonic()
    out = run_job(tmp_path_factory.mktemp("load"), job, script="vllm_load_job.py", timeout=1200)
    out["seconds"] = time.monotonic() - started
    return out


@pytest.fixture(scope="module")
def plain_tokens(llama_dir, load_requests, tmp_path_factory):
    """The unsteered requests (and the sample used by the server test) on an engine without the plugin."""
    reqs = [r for r in load_requests if r["steering"] is None and r["n"] == 1 and not r["abort_after"]][:30]
    out = run_job(tmp_path_factory.mktemp("plain"), {"model": str(llama_dir), "steering": None, "eager": True,
                                                     "requests": [{"prompt_token_ids": r["prompt_token_ids"], "max_tokens": 12} for r in reqs]})
    return {r["id"]: ids for r, ids in zip(reqs, out["token_ids"])}


def test_load_through_the_engine_loop(engine_run, load_requests, plain_tokens, hf_model, layer_saes, tokenizer):
    from sae_lens import SAE

    from reason_plugins.conditions import think_token_ids
    from tests.support.references import hf_conditional_greedy
    from vllm_patches.endpoint import records_for

    outputs = {k: v["token_ids"] for k, v in engine_run["outputs"].items()}
    aborted = set(engine_run["aborted"])
    stats = engine_run["stats"]
    print(f"\nload (engine loop): {len(load_requests)} requests, {len(aborted)} aborted, stats {stats}, "
          f"{engine_run['seconds']:.0f} s")
    assert aborted and all(r["id"] in aborted for r in load_requests if r["abort_after"])
    finished = {r["id"] for r in load_requests} - aborted
    assert finished <= set(outputs)
    for r in load_requests:
        if r["id"] in finished:
            assert len(outputs[r["id"]]) == r["n"] and all(len(t) == r["max_tokens"] for t in outputs[r["id"]]), r["id"]
            assert engine_run["outputs"][r["id"]]["finish_reasons"] == ["length"] * r["n"], r["id"]
    assert stats["preemptions"] > 0 and stats["held_for_slots"] > 0 and stats["failed"] == 0
    assert stats["peak_slots"] <= MAX_SLOTS and 0 < stats["peak_read_slots"] <= MAX_READOUT
    assert len(engine_run["after"]) == 4  # the engine still serves after all of it
    _check_reports(load_requests, lambda rid: list(records_for(engine_run["report"], rid).values()), outputs, aborted)
    for rid, ids in plain_tokens.items():
        assert outputs[rid] == [ids], rid  # unsteered: bit-identical to an engine without the plugin
    saes = {str(layer_saes[h][1]): SAE.load_from_disk(str(layer_saes[h][1])).eval() for h in HOOKS}
    steered = [r for r in load_requests if r["steering"] and r["id"] in finished and r["n"] == 1]
    with_vector = [r for r in steered if any("vector" in s for s in ([r["steering"]] if isinstance(r["steering"], dict) else r["steering"]))]
    sample = steered[::15][:8] + with_vector[:4]
    assert len(sample) >= 10
    conditioned = [r for r in steered if _conditioned(r)]
    assert {k for r in conditioned for k in ("from_token", "when", "only_in") if k in r["steering"]} == {"from_token", "when", "only_in"}
    think = think_token_ids(tokenizer)
    by_hook = {h: saes[str(layer_saes[h][1])] for h in HOOKS}
    for r in sample + conditioned[:6]:
        specs = r["steering"] if isinstance(r["steering"], list) else [r["steering"]]
        ref = hf_conditional_greedy(hf_model, r["prompt_token_ids"], specs, saes, r["max_tokens"], think, by_hook)[0] \
            if _conditioned(r) else hf_greedy(hf_model, r["prompt_token_ids"], specs, saes, r["max_tokens"])[0]
        assert outputs[r["id"]][0] == ref, r["id"]
    _check_readouts(load_requests, lambda rid: list(readouts_for(engine_run["readouts"], rid).values()), outputs, aborted,
                    hf_model, saes)


def readouts_for(readouts: dict, request_id: str) -> dict:
    from vllm_patches.request_ids import belongs_to

    return {internal: rec for internal, rec in readouts.items() if belongs_to(internal, request_id)}


def _check_readouts(requests, readouts_of, outputs, aborted, hf_model, saes, sample_every=4):
    """Every reading request's readout is whole (each choice: no position it asked for missing, the
    token ids it fed); every ``sample_every``-th finished one (n=1) equals HF hooks + SAELens encode."""
    import numpy as np

    from reason_plugins.readout import parse_readout
    from tests.support.references import hf_features

    reading = [r for r in requests if r["readout"]]
    compared = 0
    for i, r in enumerate(reading):
        recs = readouts_of(r["id"])
        assert len(recs) == r["n"], (r["id"], len(recs))
        (spec,) = parse_readout(r["readout"])
        prompt = r["prompt_token_ids"]
        for rec in recs:
            got = rec[spec.hook]
            assert got["missing_positions"] == [], (r["id"], got["missing_positions"])
            assert len(got["positions"]) == len(set(got["positions"])) and got["positions"] == sorted(got["positions"])
            assert all(t == prompt[p] for p, t in zip(got["positions"], got["token_ids"]) if p < len(prompt)), r["id"]
        if hf_model is None or r["id"] in aborted or r["n"] != 1 or i % sample_every:
            continue
        ids = prompt + outputs[r["id"]][0]
        ref = hf_features(hf_model, ids[:-1], r["steering"], saes, r["readout"])[spec.hook]
        wanted = [p for p in range(len(ids) - 1) if spec.reads(p, len(prompt))]
        assert got["positions"] == wanted and got["token_ids"] == [ids[p] for p in wanted], r["id"]
        if spec.features is not None:
            expected = ref[wanted][:, list(spec.features)].numpy()
            np.testing.assert_allclose(got["activations"], expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
        else:
            top = ref[wanted].topk(spec.top_k)
            np.testing.assert_allclose(got["top_k"]["values"], top.values.numpy(), rtol=1e-4,
                                       atol=1e-4 * max(1.0, float(top.values.abs().max())))
        compared += 1
    assert compared >= (4 if hf_model is not None else 0)


# -- vllm serve --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(llama_dir, layer_saes, engine_run, plain_tokens, tmp_path_factory):
    """``vllm serve`` exactly as the README's server section runs it (eager, small KV cache), with prefix caching."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with vllm_server(llama_dir, _steering_config(layer_saes), log, "--enable-prefix-caching") as (base, proc):
        yield base, proc, log


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=300)


def _complete(client, r, **kw):
    extra = {"return_token_ids": True}
    xargs = {k: json.dumps(r[k]) for k in ("steering", "readout") if r.get(k) is not None}
    if xargs:
        extra["vllm_xargs"] = xargs
    n = r.get("n", 1)  # vLLM refuses n > 1 with greedy sampling: those sample (unseeded, see tests/support/vllm_load_job.py)
    return client.completions.create(model="tiny", prompt=r["prompt_token_ids"], max_tokens=r["max_tokens"],
                                     n=n, temperature=0.0 if n == 1 else 0.8, extra_body=extra, **kw)


def _report(server, request_id, route="steering"):
    import urllib.request

    with urllib.request.urlopen(f"{server[0]}/v1/{route}/{request_id}", timeout=60) as response:
        return json.loads(response.read())


def test_readout_over_http_equals_the_hf_reference_and_says_why_when_there_is_none(client, server, layer_saes, hf_model,
                                                                                     load_requests):
    import urllib.error

    import numpy as np
    import openai
    from sae_lens import SAE

    from tests.support.references import hf_features

    saes = {str(layer_saes[h][1]): SAE.load_from_disk(str(layer_saes[h][1])).eval() for h in HOOKS}
    r = {**load_requests[1], "readout": {"sae": str(layer_saes[HOOKS[1]][1]), "hook": HOOKS[1], "features": [3, 40, 250]}}
    out = _complete(client, r)
    body = _report(server, out.id, "features")
    (rec,) = body["requests"].values()
    got = rec[HOOKS[1]]
    ids = r["prompt_token_ids"] + out.choices[0].token_ids
    ref = hf_features(hf_model, ids[:-1], r["steering"], saes, r["readout"])[HOOKS[1]]
    assert got["positions"] == list(range(len(ids) - 1)) and got["token_ids"] == ids[:-1] and got["missing_positions"] == []
    np.testing.assert_allclose(got["activations"], ref[:, [3, 40, 250]].numpy(), rtol=1e-4, atol=1e-4 * max(1.0, float(ref.abs().max())))
    with pytest.raises(urllib.error.HTTPError) as missing:
        _report(server, "cmpl-no-such-request", "features")
    assert missing.value.code == 404 and "no finished request with a readout has this id" in missing.value.read().decode()
    bad = {**r, "readout": {**r["readout"], "features": [256]}}
    with pytest.raises(openai.BadRequestError) as refused:
        _complete(client, bad)
    assert refused.value.status_code == 400 and "feature index 256 is out of range" in refused.value.message


def test_served_outputs_equal_a_plain_engine_and_the_hf_reference(client, server, load_requests, plain_tokens,
                                                                   hf_model, layer_saes):
    from sae_lens import SAE

    unsteered = [r for r in load_requests if r["id"] in plain_tokens][:4]
    for r in unsteered:
        out = _complete(client, r)
        assert out.choices[0].token_ids == plain_tokens[r["id"]]
        assert _report(server, out.id) == {"request_id": out.id, "steered": False, "requests": {}}
    saes = {str(layer_saes[h][1]): SAE.load_from_disk(str(layer_saes[h][1])).eval() for h in HOOKS}
    for r in [r for r in load_requests if r["steering"] and r["n"] == 1 and not _conditioned(r)][:3]:
        out = _complete(client, r)
        specs = r["steering"] if isinstance(r["steering"], list) else [r["steering"]]
        assert out.choices[0].token_ids == hf_greedy(hf_model, r["prompt_token_ids"], specs, saes, r["max_tokens"])[0]
        report = _report(server, out.id)
        (rec,) = report["requests"].values()
        assert report["steered"] and rec["spec_hash"] == _hash(r["steering"]) and rec["finished"]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_refused_spec_is_a_400_with_the_spec_error_and_the_server_keeps_serving(client, layer_saes, load_requests, endpoint):
    import openai

    bad = _spec(layer_saes, HOOKS[0], 256)  # d_sae is 256
    extra = {"vllm_xargs": {"steering": json.dumps(bad)}}
    with pytest.raises(openai.BadRequestError) as info:
        if endpoint == "completions":
            client.completions.create(model="tiny", prompt="What is 17 + 5?", max_tokens=4, extra_body=extra)
        else:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "What is 17 + 5?"}],
                                           max_tokens=4, extra_body=extra)
    assert info.value.status_code == 400
    assert "feature index 256 is out of range" in info.value.message and "d_sae=256" in info.value.message
    narrow = {"vector": [1.0] * 100, "hook": VECTOR_HOOK}  # a vector of the wrong width: also the caller's 400
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="What is 17 + 5?", max_tokens=4,
                                  extra_body={"vllm_xargs": {"steering": json.dumps(narrow)}})
    assert info.value.status_code == 400 and "has 100 values but the model's width is 128" in info.value.message
    good = _spec(layer_saes, HOOKS[1], 4)
    if endpoint == "chat":
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "What is 17 + 5?"}],
                                             max_tokens=4, temperature=0.0, extra_body={"vllm_xargs": {"steering": json.dumps(good)}})
        assert out.choices[0].finish_reason == "length"
    else:
        out = _complete(client, {**load_requests[0], "steering": good})
        assert len(out.choices[0].token_ids) == load_requests[0]["max_tokens"]


def test_load_through_the_server_with_concurrent_clients(client, server, load_requests, plain_tokens):
    """All 200 requests from 16 threads; the ones marked for abort are streamed and dropped after
    a few chunks (the server aborts them)."""
    def run(r):
        if r["abort_after"]:
            stream = _complete(client, r, stream=True)
            chunks = 0
            for chunk in stream:
                request_id = chunk.id
                chunks += 1
                if chunks >= r["abort_after"]:
                    break
            stream.close()
            return r["id"], request_id, None
        out = _complete(client, r)
        return r["id"], out.id, [c.token_ids for c in sorted(out.choices, key=lambda c: c.index)]

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, load_requests))
    seconds = time.monotonic() - started
    ids = {rid: server_id for rid, server_id, _ in results}
    outputs = {rid: toks for rid, _, toks in results if toks is not None}
    aborted = {rid for rid, _, toks in results if toks is None}
    print(f"\nload (server, 16 clients): {len(results)} requests, {len(aborted)} aborted, {seconds:.0f} s")
    assert server[1].poll() is None  # the server is alive
    for r in load_requests:
        if r["id"] in outputs:
            assert all(len(t) == r["max_tokens"] for t in outputs[r["id"]]) and len(outputs[r["id"]]) == r["n"]
    for rid, toks in plain_tokens.items():
        assert outputs[rid] == [toks], rid
    time.sleep(2)  # aborts reach the engine asynchronously
    _check_reports(load_requests, lambda rid: list(_report(server, ids[rid])["requests"].values()), outputs, aborted)
    _check_readouts(load_requests, lambda rid: list(_report(server, ids[rid], "features")["requests"].values()),
                    outputs, aborted, None, None, sample_every=10**9)
    log = server[2].read_text()
    assert "EngineDeadError" not in log and "Traceback" not in log
