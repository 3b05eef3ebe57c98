"""ReasonScore over a Ray cluster: the one-pass run of ``run.py`` with its batches spread over N actors.

The driver packs the token rows with the one packing rule (``token_batches``, exactly the batches the
one-process run makes) and hands them to Ray Data as a dataset of batches; ``map_batches`` runs them
through a pool of N ``BatchScorer`` actors, each holding the model and the SAE and adding every batch
into float64 sums with the one-process run's own per-batch code (``run.add_hf_batch``). Each task
returns its partial sums with the batch indices they hold; the driver adds them (``ReasonStats.merge``:
the exact merge of shards), records those indices in the checkpoint (``done_batches`` ranges) and saves
it every ``checkpoint_every`` batches. So:

- the scores equal the one-process run's up to float64 summation order (same batches, same code);
- a killed actor is restarted by Ray and its unfinished task rerun (at most ``RETRIES`` times): its
  partial sums only count once they have arrived, and a partial whose batches were already added is
  dropped, so nothing is counted twice;
- an interrupted driver reruns the same command and resumes from the last saved checkpoint, scoring
  only the batches it does not hold (the same identity rules as the one-process run);
- the run fails unless every batch was added exactly once: a partial result is never reported as whole.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from sae_lens_ext.reason_score.run import DONE_KEY, PreparedRun, add_hf_batch, batch_ranges, done_batches

RETRIES = 2  # actor restarts and task retries Ray may make before the run fails (then rerun: it resumes)


class BatchScorer:
    """A Ray Data actor: loads the model and the SAE once, then turns each block of token batches into
    one row of partial float64 sums (``sum_pos``, ``sum_neg``, ``sum_groups``, counts, batch indices)."""

    def __init__(self, setup: dict):
        from reason_plugins.ray_actors import ActorStartError, failure_text
        from reason_plugins.saes import load_sae
        from sae_lens_ext.inputs.activations import ActivationSource, FeatureEncoder, load_model

        try:
            sae = setup["sae"]
            if isinstance(sae, dict):
                sae = load_sae(sae["sae"], sae["sae_id"], setup["device"], sae["loader"])
            model = load_model(setup["model"], setup["hook"], setup["backend"], setup["device"])
        except Exception as exc:  # one line with the root cause, not the worker's traceback (which stays in its log)
            raise ActorStartError(f"a Ray worker (pid {os.getpid()}) could not load the model or the SAE: {failure_text(exc)}") from None
        self.source = ActivationSource(model, setup["hook"])
        self.encoder = FeatureEncoder(sae, setup["feature_chunk_size"])
        self.setup = setup

    def __call__(self, block: dict) -> dict:
        import numpy as np
        import torch

        from sae_lens_ext.reason_score import metric as rsm

        s = self.setup
        stats = rsm.ReasonStats(list(s["groups"]), self.encoder.d_sae)
        device = next(self.encoder.sae.parameters()).device
        rows = 0
        for tokens in block["tokens"]:
            batch = torch.as_tensor(np.stack([np.asarray(r, dtype=np.int64) for r in tokens]))
            add_hf_batch(stats, self.source, self.encoder, batch, s["group_seqs"], s["expand_range"], s["ignore"], device)
            rows += batch.shape[0]
        counts = [stats.count_pos, stats.count_neg, stats.n_tokens, stats.n_batches, rows, os.getpid()]
        return {"index": [np.asarray(block["index"], dtype=np.int64)], "sum_pos": [stats.sum_pos.numpy()],
                "sum_neg": [stats.sum_neg.numpy()], "sum_groups": [stats.sum_groups.numpy()],
                "count_groups": [stats.count_groups.numpy()], "counts": [np.asarray(counts, dtype=np.int64)]}


def _worker_setup(prepared: PreparedRun) -> dict:
    """What each actor needs: names it loads itself when the run was given names, objects otherwise."""
    config, o = prepared.config, prepared.opts
    model = prepared.model_arg if isinstance(prepared.model_arg, (str, Path)) else prepared.model
    sae = ({"sae": config["sae"], "sae_id": config["sae_id"], "loader": config["sae_loader"]}
           if config["sae"] and isinstance(prepared.sae_arg, (str, Path)) else prepared.sae)
    return {"model": str(model) if isinstance(model, Path) else model, "sae": sae, "hook": config["hook"],
            "backend": config["backend"], "device": prepared.device, "feature_chunk_size": prepared.encoder.chunk,
            "groups": list(prepared.groups), "group_seqs": list(prepared.seqs.values()),
            "expand_range": o["expand_range"], "ignore": prepared.ignore}


def _partial_stats(row, groups, d_sae):
    import torch

    from sae_lens_ext.reason_score import metric as rsm

    count_pos, count_neg, n_tokens, n_batches, rows, pid = (int(v) for v in row["counts"])
    stats = rsm.ReasonStats(list(groups), d_sae, sum_pos=torch.from_numpy(row["sum_pos"].copy()),
                            sum_neg=torch.from_numpy(row["sum_neg"].copy()), sum_groups=torch.from_numpy(row["sum_groups"].copy()),
                            count_pos=count_pos, count_neg=count_neg, count_groups=torch.from_numpy(row["count_groups"].copy()),
                            n_tokens=n_tokens, n_batches=n_batches)
    return stats, {int(i) for i in row["index"]}, rows, pid


def run_on_ray(prepared: PreparedRun, checkpoint=None, *, address=None, workers: int = 1, progress: bool = True,
               require_matches: bool = True, num_cpus: int | None = None, temp_dir: str | None = None,
               batches_per_task: int | None = None, runtime_env: dict | None = None, _interrupt_after=None, _on_partial=None):
    """Score ``prepared`` with ``workers`` Ray actors (see the module docstring); returns a ``ReasonScoreResult``.
    ``address``: a running cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``) or None to start a local
    one (``num_cpus``, ``temp_dir``). ``batches_per_task``: token batches per actor call (default: enough
    calls to keep every actor busy, at most ``checkpoint_every``). The actors run with this process's
    ``HF_*`` / ``TRANSFORMERS_*`` / ... settings added to ``runtime_env`` (Ray's; ``reason_plugins.ray_actors``)."""
    from tqdm.auto import tqdm

    from reason_plugins.cli_args import check_int
    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.reason_score import metric as rsm

    check_int("workers", workers, 1)
    if prepared.engine_factory is not None or prepared.generate is not None:
        raise ValueError("a Ray run scores given rows with the model here (engine 'hf'); the vLLM engine path runs "
                         "its own ranks (tensor_parallel_size)")
    o, config = prepared.opts, prepared.config
    if o["num_chunks"] != 1:
        raise ValueError("a Ray run scores every row itself: give num_chunks=1 (the workers share the batches)")
    stats = rsm.ReasonStats(list(prepared.groups), prepared.encoder.d_sae,
                            extra={**{k: config[k] for k in ("job", "fingerprint", "num_chunks", "chunk_index", "identity")}, DONE_KEY: []})
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = rsm.ReasonStats.load(checkpoint)
        prepared.check_against(saved.extra, f"checkpoint {str(checkpoint)!r}", "delete it, choose another output, or start over (--overwrite)")
        saved.extra[DONE_KEY] = batch_ranges(done_batches(saved))
        stats = saved
    done = done_batches(stats)
    batches = list(token_batches(prepared.tokens, prepared.tokenizer, batch_size=o["batch_size"], context_size=o["context_size"],
                                 prepend_bos=o["prepend_bos"], n_samples=o["n_samples"], seed=o["seed"], text_column=o["text_column"]))
    if done:
        print(f"ReasonScore: resuming from batch {len(done)}/{len(batches)} ({str(checkpoint)!r}, identical run {config['job']})",
              file=sys.stderr)
    todo = [(i, b) for i, b in enumerate(batches) if i not in done]
    if todo:
        _score_batches(prepared, stats, todo, checkpoint, address=address, workers=workers, progress=progress, tqdm=tqdm,
                       num_cpus=num_cpus, temp_dir=temp_dir, batches_per_task=batches_per_task, runtime_env=runtime_env,
                       interrupt_after=_interrupt_after, on_partial=_on_partial)
    missing = set(range(len(batches))) - done_batches(stats)
    if missing:
        raise RuntimeError(f"the Ray run added {len(batches) - len(missing)} of {len(batches)} batches ({len(missing)} missing, "
                           f"e.g. {sorted(missing)[:5]}); rerun to resume from the checkpoint")
    if stats.n_tokens == 0:
        raise ValueError(f"the data {config['data'] or type(prepared.tokens).__name__!r} gave no token rows")
    if require_matches and stats.count_pos == 0:
        raise ValueError(f"no vocabulary string occurs in the {stats.n_tokens} scored tokens (groups: {list(prepared.groups)})")
    return rsm.ReasonScoreResult.from_stats(stats, o["alpha"], o["eps"], config)


def _score_batches(prepared, stats, todo, checkpoint, *, address, workers, progress, tqdm, num_cpus, temp_dir,
                   batches_per_task, runtime_env, interrupt_after, on_partial) -> None:
    """Stream ``todo`` [(index, batch)] through the actor pool, adding each partial into ``stats`` once."""
    import ray

    from reason_plugins.ray_actors import failure_text
    from reason_plugins.ray_actors import runtime_env as actor_env
    from reason_plugins.ray_cluster import connect, device_resources

    cluster = connect(address, num_cpus=num_cpus, temp_dir=temp_dir)
    _quiet_ray_data()
    cuda = str(prepared.device).startswith("cuda")
    resources = device_resources({"GPU": cluster.get("GPU", 0)} if cuda else {"CPU": cluster.get("CPU", 0)}, 1, workers,
                                 f"ReasonScore --workers {workers}")
    per_task = batches_per_task or max(1, min(prepared.opts["checkpoint_every"], -(-len(todo) // (2 * workers))))
    ds = ray.data.from_items([{"index": i, "tokens": b.tolist()} for i, b in todo], override_num_blocks=len(todo))
    with warnings.catch_warnings():  # bounded restarts have no named parameter in ray 2.60 (the pinned release)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(BatchScorer, fn_constructor_kwargs={"setup": _worker_setup(prepared)}, batch_size=per_task,
                            batch_format="numpy", concurrency=workers, max_restarts=RETRIES, max_task_retries=RETRIES,
                            runtime_env=actor_env(runtime_env), **resources)
    every, since_save = prepared.opts["checkpoint_every"], 0
    bar = tqdm(total=sum(len(b) for _, b in todo), desc=f"ReasonScore on Ray ({workers} workers)", unit="row", disable=not progress)
    try:
        for row in ds.iter_rows():
            partial, indices, rows, pid = _partial_stats(row, stats.groups, stats.d_sae)
            held = done_batches(stats)
            if indices & held:
                if indices <= held:
                    continue  # a retried task's partial that already arrived: counted once
                raise RuntimeError(f"a Ray partial overlaps the added batches only in part ({sorted(indices & held)[:5]}...)")
            extra = dict(stats.extra, **{DONE_KEY: batch_ranges(held | indices)})
            stats.__dict__.update(stats.merge(partial).__dict__)
            stats.extra = extra
            bar.update(rows)
            since_save += len(indices)
            if checkpoint is not None and since_save >= every:
                stats.save(checkpoint)
                since_save = 0
            if on_partial is not None:
                on_partial({"indices": sorted(indices), "pid": pid, "done": len(done_batches(stats))})
            if interrupt_after is not None and len(done_batches(stats)) >= interrupt_after:
                raise KeyboardInterrupt(f"interrupted after {len(done_batches(stats))} batches (test hook)")
        if checkpoint is not None and since_save:
            stats.save(checkpoint)
    except ray.exceptions.RayError as exc:  # a worker failed or died: one line with its cause (what was added is saved)
        if checkpoint is not None and since_save:
            stats.save(checkpoint)
        resume = " (rerun to resume from the checkpoint)" if checkpoint is not None and done_batches(stats) else ""
        raise RuntimeError(f"ReasonScore on Ray: {failure_text(exc)}{resume}") from None
    finally:
        bar.close()


def _quiet_ray_data() -> None:
    """Our tqdm bar counts the rows; Ray Data's own progress bars and execution logs stay off."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
