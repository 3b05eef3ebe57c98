"""Run one vLLM job in a fresh process (a second engine cannot share the test process with the
session engine): ``python tests/support/vllm_job.py JOB.json OUT.json``.

JOB: {"model": dir, "steering": config or null, "eager": bool, "env": {name: value} (optional),
      "tensor_parallel_size": n (optional),
      "requests": [{"prompt_token_ids": [...], "max_tokens": n, "steering": spec or null, "readout": spec or null}],
      "capture": [[hook, num_tokens, request_index], ...]}   (capture after that request ran alone)
OUT: {"token_ids": [[...], ...], "captured": {hook: [[...]]},
      "reports": [per worker rank: what it applied to each request],   (steering jobs)
      "readouts": [per request: what ``SteeredLLM.readout`` returned, arrays as lists]}
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(job_path: str, out_path: str) -> None:
    from vllm import SamplingParams

    from vllm_patches.llm import SteeredLLM

    job = json.loads(open(job_path).read())
    os.environ.update(job.get("env", {}))  # before vLLM starts its engine process
    kwargs = dict(dtype="float32", max_model_len=256, seed=0, enforce_eager=job.get("eager", False),
                  tensor_parallel_size=job.get("tensor_parallel_size", 1))
    if job.get("steering"):
        llm = SteeredLLM(job["model"], **job["steering"], **kwargs)
        generate = llm.generate
    else:
        from vllm import LLM

        llm = LLM(job["model"], **kwargs)
        generate = lambda prompts, params, steering=None: llm.generate(prompts, params)  # noqa: E731
    prompts = [{"prompt_token_ids": r["prompt_token_ids"]} for r in job["requests"]]
    params = [SamplingParams(max_tokens=r["max_tokens"], temperature=0.0) for r in job["requests"]]
    steering = tuple(r.get("steering") for r in job["requests"])
    readout = tuple(r.get("readout") for r in job["requests"])
    out = {"token_ids": [], "captured": {}}
    if job.get("capture"):
        for hook, num_tokens, index in job["capture"]:
            # one token: the only engine step is the prefill of the whole prompt
            generate([prompts[index]], [SamplingParams(max_tokens=1, temperature=0.0)], steering=(steering[index],))
            out["captured"][hook] = llm.captured(hook, num_tokens).tolist()
    results = generate(prompts, params, steering=steering, readout=readout) if job.get("steering") else generate(prompts, params)
    out["token_ids"] = [list(r.outputs[0].token_ids) for r in results]
    if job.get("steering"):
        out["reports"] = llm.llm.collective_rpc("reason_steering_report")
        out["readouts"] = json.loads(json.dumps(llm.readout(results), default=lambda a: a.tolist()))
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
