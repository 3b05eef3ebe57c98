"""The files of a ReasonScore run and what reads them back: ``scores.safetensors``, ``stats.safetensors``,
``top_features.json``, ``score_histogram.png`` and ``run_config.json`` (written atomically), the run's
inputs saved beside it when they were in memory, ``score_to_dir`` (score + write, refusing another run's
directory unless ``overwrite``) and ``merge_shards`` (exact merge of shard runs of one job).
"""

from __future__ import annotations

import json
from pathlib import Path

from sae_lens_ext.reason_score.run import PreparedRun


def write_outputs(result, out_dir, top_k: int = 20) -> dict[str, Path]:
    """scores.safetensors, stats.safetensors (mergeable sums), top_features.json, the histogram and
    the run config, each written atomically."""
    import torch
    from safetensors.torch import save

    from reason_plugins.files import write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    s = result.stats
    tensors = {"scores": result.scores, "entropy": result.entropy, "mu_pos": result.mu_pos, "mu_neg": result.mu_neg,
               "mu_groups": result.mu_groups, "count_groups": s.count_groups,
               "counts": torch.tensor([s.count_pos, s.count_neg, s.n_tokens], dtype=torch.int64)}
    paths = {"scores": write_bytes_atomic(out / "scores.safetensors", save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"groups": json.dumps(s.groups), "counts": "positive,negative,tokens"}))}
    paths["stats"] = s.save(out / "stats.safetensors")
    paths["top_features"] = write_json_atomic(out / "top_features.json", result.top(top_k))
    paths["histogram"] = write_bytes_atomic(out / "score_histogram.png", histogram_png(result, top_k))
    paths["config"] = write_json_atomic(out / "run_config.json", {**result.config, "alpha": result.alpha, "top_k": top_k,
                                                                  "counts": result.counts()})
    return paths


def histogram_png(result, top_k: int = 20) -> bytes:
    from reason_plugins.figures import figure_png, pyplot

    fig, ax = pyplot().subplots(figsize=(7, 4))
    ax.hist(result.scores.numpy(), bins=100, color="tab:blue", log=True)
    for i, row in enumerate(result.top(top_k)):
        ax.axvline(row["score"], color="tab:red", lw=0.8, alpha=0.7, label=f"top {top_k}" if i == 0 else None)
    ax.set(xlabel="ReasonScore", ylabel="features (log)", title=f"ReasonScore of {result.d_sae} SAE features")
    if top_k:
        ax.legend()
    return figure_png(fig)


def _check_out(out: Path) -> None:
    """--out must be (or become) a writable directory: checked before anything is loaded."""
    from reason_plugins.cli_args import check_out_dir

    check_out_dir(out, "out_dir")


def save_inputs(prepared: PreparedRun, out: Path) -> None:
    """Make the run reopenable from its directory alone: in-memory token rows / datasets are saved as
    a dataset (``out/data``) and an SAE known by no path is saved with SAELens (``out/sae``); the
    run config then names those."""
    import datasets
    import torch

    config = prepared.config
    tokens = prepared.tokens
    if config["data"] is None:
        if isinstance(tokens, (torch.Tensor, list)):
            ds = datasets.Dataset.from_dict({"tokens": [list(map(int, row)) for row in tokens]})
        elif isinstance(tokens, datasets.DatasetDict):
            ds = tokens["train"]
        else:
            ds = tokens
        tmp = out / ".data.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        ds.save_to_disk(str(tmp))
        _replace_dir(tmp, out / "data")
        config["data"] = str((out / "data").resolve())
    if config["sae"] is None:
        tmp = out / ".sae.tmp"
        prepared.sae.save_model(str(tmp))
        _replace_dir(tmp, out / "sae")
        config.update(sae=str((out / "sae").resolve()), sae_id=None, sae_loader=None)


def _replace_dir(tmp: Path, final: Path) -> None:
    import shutil

    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def score_to_dir(model, sae, data, out_dir, *, top_k: int = 20, overwrite: bool = False, progress: bool = True,
                 require_matches: bool = True, _interrupt_after=None, ray=None, workers: int = 1, ray_options=None, **kwargs):
    """Run ``compute_reason_score`` checkpointing into ``out_dir`` (rerunning the same run resumes;
    a checkpoint or finished run of a different job there is refused unless ``overwrite``), then
    write the outputs; returns the result. In-memory rows (and an SAE with no path) are saved next to
    the run so ``--scores out_dir`` can reopen it. Bad input raises before anything is written.
    ``ray``: a Ray cluster's address (``"local"`` starts one) to score with ``workers`` actors
    (``ray_run.run_on_ray``, ``ray_options`` passed to it); same numbers, same checkpoint and resume."""
    out = Path(out_dir)
    _check_out(out)
    if ray is not None:
        from reason_plugins.cli_args import check_int
        from reason_plugins.ray_cluster import check_reachable, check_version

        check_int("workers", workers, 1)
        if isinstance(data, (str, Path)) and Path(str(data)).exists():
            from sae_lens_ext.inputs.token_data import SCORED_COLUMN, load_data

            if SCORED_COLUMN in (getattr(load_data(data), "column_names", None) or []):
                raise ValueError(f"data {str(data)!r} holds a generated run's rows (a {SCORED_COLUMN!r} mask keeps their prompts out "
                                 "of the token sets), which the Ray path does not read: score it without ray")
        check_version()
        check_reachable(ray)
    checkpoint = Path(kwargs.pop("checkpoint", None) or out / "checkpoint.safetensors")
    prepared = PreparedRun(model, sae, data, **kwargs)
    if overwrite:
        checkpoint.unlink(missing_ok=True)
    elif (out / "run_config.json").is_file() and not checkpoint.is_file():
        previous = json.loads((out / "run_config.json").read_text())
        prepared.check_against(previous, f"the finished run in {str(out)!r}", "choose another --out or pass --overwrite")
    if ray is None:
        result = prepared.run(checkpoint, progress, require_matches, _interrupt_after)
    else:
        from sae_lens_ext.reason_score.ray_run import run_on_ray

        result = run_on_ray(prepared, checkpoint, address=None if ray == "local" else ray, workers=workers, progress=progress,
                            require_matches=require_matches, _interrupt_after=_interrupt_after, **(ray_options or {}))
    save_inputs(prepared, out)  # generated rows too: contexts, dashboards and control reopen them from out/data
    result.config = dict(prepared.config)
    write_outputs(result, out, top_k)
    checkpoint.unlink(missing_ok=True)  # finished: a rerun starts afresh (transcripts.jsonl stays: the run's data)
    return result


def merge_shards(shard_dirs, out_dir=None, *, top_k: int = 20, alpha: float | None = None):
    """Add the statistics of shard runs (``num_chunks``/``chunk_index``) of one job and score them."""
    from sae_lens_ext.reason_score import metric as rsm

    if not shard_dirs:
        raise ValueError("no shard directories given to merge")
    from sae_lens_ext.reason_score.identity import differences

    stats = [rsm.ReasonStats.load(Path(d) / "stats.safetensors") for d in shard_dirs]
    configs = [json.loads((Path(d) / "run_config.json").read_text()) for d in shard_dirs]
    for d, c in zip(shard_dirs, configs):
        if "identity" not in c:
            raise ValueError(f"shard {str(d)!r} predates run identities (its run_config.json has no 'identity'); rescore it")
    for d, c in zip(shard_dirs[1:], configs[1:]):
        diff = differences(configs[0]["identity"], c["identity"])
        if diff:
            raise ValueError(f"shards {str(shard_dirs[0])!r} and {str(d)!r} come from different runs ({'; '.join(diff)}); "
                             f"only the shard index may differ")
    have, want = sorted(c["chunk_index"] for c in configs), list(range(configs[0]["num_chunks"]))
    if have != want:
        raise ValueError(f"shard chunk indices {have} do not cover 0..{want[-1]} exactly once")
    merged = stats[0]
    for other in stats[1:]:
        merged = merged.merge(other)
    config = {**configs[0], "chunk_index": None, "merged_from": [str(d) for d in shard_dirs]}
    if merged.count_pos == 0:
        raise ValueError(f"no vocabulary string occurs in the {merged.n_tokens} scored tokens of the shards")
    result = rsm.ReasonScoreResult.from_stats(merged, configs[0]["alpha"] if alpha is None else alpha, configs[0]["eps"], config)
    if out_dir is not None:
        write_outputs(result, out_dir, top_k)
    return result
