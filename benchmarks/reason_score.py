"""Benchmark: our single-pass ReasonScore against a faithful re-implementation of the reference
algorithm (SAE-Reasoning's compute_score.py), on the same tiny Llama fixture, in one run.

The reference loops over blocks of 48 features; for every block it makes a full pass over the
data -- model forward (stopped after the hook layer) + SAE encode of just that block's features --
and updates float32 rolling means per vocabulary group, recomputing the token masks each time.
Ours runs the model once per token batch and accumulates float64 sums of all features.

Also measures peak memory of our run at two data sizes (subprocesses, RSS high-water mark above
the pre-run RSS) to show it does not grow with the number of tokens.

    python benchmarks/reason_score.py [--d-sae 4096] [--rows 32] [--block 48]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HOOK = "blocks.2.hook_resid_post"
CONTEXT = 128


def build(cache: Path, d_sae: int, rows: int):
    """Fixture model (random tiny Llama), a random-init StandardSAE of d_sae features, token rows."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformers import AutoTokenizer

    from reason_plugins import tiny_models
    from sae_lens_ext.inputs.token_data import tokens_dataset

    tok_dir = tiny_models.build_tokenizer(cache / "tokenizer")
    model_dir = tiny_models.build_model(cache / "llama", tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=d_sae))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.02)  # some features fire, some do not
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.context_size = CONTEXT
    texts = tiny_models.training_texts(tokenizer, max(40, rows * 2), seed=7)
    tokens = torch.tensor(tokens_dataset(tokenizer, texts, context_size=CONTEXT)["tokens"][:rows])
    assert tokens.shape[0] == rows, f"not enough text for {rows} rows"
    return model_dir, tokenizer, sae, tokens


# ---------------------------------------------------------------- the reference, re-implemented
class RefRollingMean:
    """Per-group, positive and negative running means (float32), as the reference keeps them."""

    def __init__(self, groups, ignore, expand):
        self.groups, self.ignore, self.expand = groups, ignore, expand
        self.means, self.counts = None, [0] * len(groups)
        self.mean_pos = self.mean_neg = None
        self.count_pos = self.count_neg = 0

    def _seq_mask(self, tokens, seq):
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        n = len(seq)
        if n > tokens.shape[1]:
            return mask
        hit = (tokens.unfold(1, n, 1) == torch.tensor(seq).view(1, 1, -1)).all(2)
        b, w = hit.nonzero(as_tuple=True)
        if len(b) == 0:
            return mask
        mask[b.unsqueeze(1).expand(-1, n).reshape(-1), (w.unsqueeze(1) + torch.arange(n)).reshape(-1)] = True
        left, right = self.expand
        b, p = mask.nonzero(as_tuple=True)
        delta = torch.zeros(tokens.shape[0], tokens.shape[1] + 1, dtype=torch.int32)
        delta[b, (p - left).clamp(min=0)] += 1  # the reference's (non-accumulating) difference array
        delta[b, (p + right).clamp(max=tokens.shape[1] - 1) + 1] -= 1
        return delta.cumsum(1)[:, :-1] > 0

    @staticmethod
    def _update(acts, mask, mean, count):
        sel = acts[mask]
        if sel.shape[0] == 0:
            return mean, count
        new = count + sel.shape[0]
        return mean + (sel.shape[0] / new) * (sel.mean(0) - mean), new

    def update(self, tokens, acts):
        if self.means is None:
            self.means = [torch.zeros(acts.shape[-1]) for _ in self.groups]
            self.mean_pos, self.mean_neg = torch.zeros(acts.shape[-1]), torch.zeros(acts.shape[-1])
        ignore = torch.isin(tokens, torch.tensor(self.ignore))
        combined = torch.zeros_like(tokens, dtype=torch.bool)
        for i, seqs in enumerate(self.groups):
            gm = torch.zeros_like(tokens, dtype=torch.bool)
            for seq in seqs:
                gm |= self._seq_mask(tokens, seq)
            gm &= ~ignore
            self.means[i], self.counts[i] = self._update(acts, gm, self.means[i], self.counts[i])
            combined |= gm
        self.mean_pos, self.count_pos = self._update(acts, combined & ~ignore, self.mean_pos, self.count_pos)
        self.mean_neg, self.count_neg = self._update(acts, ~combined & ~ignore, self.mean_neg, self.count_neg)


@torch.no_grad()
def reference_reason_score(bridge, sae, tokens, groups, ignore, expand=(1, 2), alpha=0.7, block=48, batch=8, eps=1e-12):
    import copy

    from tqdm.auto import tqdm

    enc = copy.deepcopy(sae)
    enc.fold_W_dec_norm()
    layer = int(HOOK.split(".")[1])
    batches = tokens.split(batch)
    pos_neg, single = [], []
    for start in tqdm(range(0, enc.cfg.d_sae, block), desc="reference blocks", leave=False):
        feats = slice(start, min(start + block, enc.cfg.d_sae))
        stats = RefRollingMean(groups, ignore, expand)
        for mb in batches:  # a full pass over the data for every block of features
            store = {}
            bridge.run_with_hooks(mb, fwd_hooks=[(HOOK, lambda a, hook, store=store: store.setdefault("a", a))],
                                  stop_at_layer=layer + 1, return_type=None)
            sae_in = enc.process_sae_in(store["a"])  # what the masking context leaves of encode
            acts = torch.relu(sae_in @ enc.W_enc[:, feats] + enc.b_enc[feats]).float()
            stats.update(mb, acts)
        pos_neg.append(torch.stack([stats.mean_pos, stats.mean_neg], 1))
        single.append(torch.stack(stats.means, 1))
    means, single = torch.cat(pos_neg), torch.cat(single)
    probs = single / (single.sum(1, keepdim=True) + eps)
    h = -(probs * torch.where(probs > 0, probs.log(), 0)).sum(1) / math.log(probs.shape[1])
    return means[:, 0] / (means[:, 0].sum() + eps) * h ** alpha - means[:, 1] / (means[:, 1].sum() + eps)


# ---------------------------------------------------------------- memory probe (subprocess)
def memory_probe(cache: str, d_sae: int, rows: int) -> dict:
    """Peak RSS above the pre-run RSS of one of our runs over ``rows`` rows streamed from a dataset."""
    from datasets import Dataset

    from sae_lens_ext.reason_score.run import compute_reason_score

    model_dir, tokenizer, sae, tokens = build(Path(cache), d_sae, rows)
    ds = Dataset.from_dict({"tokens": tokens.tolist()})
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    compute_reason_score(model, sae, tokens[:8], tokenizer=tokenizer, progress=False)  # warm-up allocations

    def status(key):
        return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (VmHWM) to now
        f.write("5")
    t = time.perf_counter()
    res = compute_reason_score(model, sae, ds, tokenizer=tokenizer, progress=False, batch_size=8)
    return {"rows": rows, "tokens": res.stats.n_tokens, "seconds": time.perf_counter() - t,
            "peak_above_start_MiB": (status("VmHWM:") - before) / 1024, "rss_before_MiB": before / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--rows", type=int, default=32, help="token rows of 128 for the timing comparison")
    p.add_argument("--block", type=int, default=48, help="the reference's minibatch_size_features")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--memory-rows", type=int, nargs=2, default=[32, 256])
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "reason_score_bench"))
    p.add_argument("--_probe", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._probe is not None:
        print(json.dumps(memory_probe(args.cache, args.d_sae, args._probe)))
        return

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from reason_plugins.vocabulary import resolve_vocabulary
    from sae_lens_ext.reason_score.run import compute_reason_score

    torch.set_num_threads(os.cpu_count() or 1)
    model_dir, tokenizer, sae, tokens = build(Path(args.cache), args.d_sae, args.rows)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ignore = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    groups = [[tuple(tokenizer.encode(s, add_special_tokens=False)) for s in v] for v in resolve_vocabulary("paper").values()]
    common = dict(ignore_tokens=ignore, tokenizer=tokenizer, progress=False, batch_size=args.batch_size)
    compute_reason_score(hf, sae, tokens[:args.batch_size], **common)  # warm-up

    timings = {}
    t = time.perf_counter()
    ours_bridge = compute_reason_score(bridge, sae, tokens, **common)
    timings["ours_bridge"] = time.perf_counter() - t
    t = time.perf_counter()
    compute_reason_score(hf, sae, tokens, **common)  # same numbers (tested); timed for the HF path
    timings["ours_hf"] = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_reason_score(bridge, sae, tokens, groups, ignore, block=args.block, batch=args.batch_size).double()
    timings["reference_bridge"] = time.perf_counter() - t

    n_tok = tokens.numel()
    agree = float((ours_bridge.scores - ref).abs().max() / ref.abs().max())
    report = {
        "device": "cpu", "threads": torch.get_num_threads(), "d_sae": args.d_sae, "rows": args.rows, "tokens": n_tok,
        "block": args.block, "batch_size": args.batch_size, "reference_model_passes": math.ceil(args.d_sae / args.block),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "tokens_per_s": {k: round(n_tok / v, 1) for k, v in timings.items()},
        "speedup_same_host_bridge": round(timings["reference_bridge"] / timings["ours_bridge"], 1),
        "speedup_ours_hf_vs_reference": round(timings["reference_bridge"] / timings["ours_hf"], 1),
        "max_abs_score_diff_over_max_score_vs_reference": agree,
        "top10_overlap_vs_reference": len(set(ours_bridge.scores.topk(10).indices.tolist()) & set(ref.topk(10).indices.tolist())),
    }
    del bridge, hf
    report["memory"] = []
    for rows in args.memory_rows:
        out = subprocess.run([sys.executable, __file__, "--_probe", str(rows), "--d-sae", str(args.d_sae), "--cache", args.cache],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        report["memory"].append(json.loads(out))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
