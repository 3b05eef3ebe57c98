"""The engine half of the load test, in its own process (one engine at a time, never two in the
test process): ``python tests/support/vllm_load_job.py JOB.json OUT.json``.

JOB: {"model": dir, "engine": {LLM kwargs}, "steering": {steering config},
      "requests": [{"id", "prompt_token_ids", "max_tokens", "n", "steering", "readout", "abort_after"}]}
      (``abort_after``: abort the request once it has generated that many tokens)
OUT: {"outputs": {id: {"token_ids": [[...] per choice], "finish_reasons": [...]}},
      "report": {engine request id: record}, "readouts": {engine request id: {hook: readout}},
      "stats": {admission counters}, "aborted": [ids],
      "after": [token ids of one request run after everything: the engine still serves]}

Requests go through ``LLM``'s own engine loop (``llm_engine.add_request`` / ``step``, what
``LLM.generate`` runs) so that some can be aborted mid-generation.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(job_path: str, out_path: str) -> None:
    from vllm import SamplingParams

    from vllm_patches.llm import SteeredLLM

    job = json.loads(open(job_path).read())
    llm = SteeredLLM(job["model"], **job["steering"], **job["engine"])
    engine = llm.llm.llm_engine
    abort_after = {}
    for r in job["requests"]:
        extra = {k: r[k] for k in ("steering", "readout") if r.get(k) is not None} or None
        n = r.get("n", 1)  # vLLM refuses n > 1 with greedy sampling: those sample (unseeded: a per-request
        # seed fails in vLLM's CPU runner bookkeeping, GPUModelRunner._bookkeeping_sync, with chunked prefill)
        params = SamplingParams(max_tokens=r["max_tokens"], n=n, temperature=0.0 if n == 1 else 0.8, extra_args=extra)
        engine.add_request(r["id"], {"prompt_token_ids": r["prompt_token_ids"]}, params)
        if r.get("abort_after"):
            abort_after[r["id"]] = r["abort_after"]
    outputs, aborted, choices = {}, [], {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen = choices.setdefault(out.request_id, {})  # n > 1: choices arrive as they progress
            for c in out.outputs:
                seen[c.index] = (list(c.token_ids), c.finish_reason)
            if out.finished:
                outputs[out.request_id] = {"token_ids": [seen[i][0] for i in sorted(seen)],
                                           "finish_reasons": [seen[i][1] for i in sorted(seen)]}
            elif out.request_id in abort_after and len(out.outputs[0].token_ids) >= abort_after[out.request_id]:
                engine.abort_request([out.request_id])
                aborted.append(out.request_id)
                del abort_after[out.request_id]
    report = llm.llm.collective_rpc("reason_steering_report")[0]
    from vllm_patches.engine.readout import to_lists, unpack

    readouts = to_lists(unpack(llm.llm.collective_rpc("reason_steering_readout")[0]))
    stats = llm.llm.collective_rpc("reason_steering_stats")[0]
    first = job["requests"][0]
    after = llm.generate([{"prompt_token_ids": first["prompt_token_ids"]}],
                         SamplingParams(max_tokens=4, temperature=0.0), steering=(first.get("steering"),))
    with open(out_path, "w") as f:
        json.dump({"outputs": outputs, "report": report, "readouts": readouts, "stats": stats, "aborted": aborted,
                   "after": list(after[0].outputs[0].token_ids)}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
