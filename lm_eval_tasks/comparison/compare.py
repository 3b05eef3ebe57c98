"""Comparing steering arms (what ``reason-sae compare`` runs, ``cli.py``): steering arms against a baseline arm, problem by problem, with
intervals, a paired test per arm and metric, and p-values adjusted for having tried many arms.

Arms come from lm-eval ``--log_samples`` output: a multi-arm ``steered_vllm`` run holds
``samples_<task>@<arm>_*.jsonl`` (every arm of one run dir); a plain run's tasks take the run's
folder name as their arm (``--names`` overrides), so ``compare runs/base runs/steered`` still
compares two single-arm runs. The baseline arm is ``--baseline``, else one named ``baseline``, else
the first run's.

For each arm vs the baseline and each metric (``exact_match`` = accuracy, ``reasoning_tokens``,
``total_tokens`` when present): the mean per-problem difference, its bootstrap interval and the
paired sign-flip p-value (``stats.paired_test``), then the p-values of *all* arms x metrics are
adjusted together (Holm-Bonferroni by default, Benjamini-Hochberg with ``--fdr``). "significant" means
adjusted p < alpha and an interval that excludes 0. Problems are paired by ``doc_id`` and checked by
``doc_hash``: runs over different problems are refused.

``write_outputs`` writes ``--out`` (a forest plot, PNG) and beside it ``.json`` (``{"baseline", "arms": {arm: {metric:
{"diff", "diff_low", "diff_high", "p_value", "p_adjusted", "significant", "n", ...}}}}``; metric keys are
``<task>/<metric>`` when the runs hold several tasks), ``.md`` (the table) and, when arms are a sweep
(``f<feature>_s<strength>``), ``<stem>_dose.png`` (strength vs accuracy and length, a line per feature).
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

METRICS = ("exact_match", "reasoning_tokens", "total_tokens")
LABELS = {"exact_match": "accuracy (pass@1)", "reasoning_tokens": "reasoning length (tokens)", "total_tokens": "total tokens"}
_SAMPLES = re.compile(r"^samples_(.+)_(\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")
_SWEEP = re.compile(r"^f(\d+)_s(m?[\d.e+\-]+)$")


def load_samples(path: str | Path) -> dict[str, dict[int, dict]]:
    """``{task: {doc_id: sample row}}`` from a run dir (latest file per task) or one samples file."""
    path = Path(path)
    files = [path] if path.is_file() else [Path(p) for p in glob.glob(str(path / "**" / "samples_*.jsonl"), recursive=True)]
    latest: dict[str, tuple[str, Path]] = {}
    for f in files:
        m = _SAMPLES.match(f.name)
        task, stamp = (m.group(1), m.group(2)) if m else (f.stem.removeprefix("samples_"), "")
        if task not in latest or stamp > latest[task][0]:
            latest[task] = (stamp, f)
    if not latest:
        raise FileNotFoundError(f"no samples_*.jsonl under {str(path)!r}: run lm_eval with --log_samples --output_path")
    out = {}
    for task, (_, f) in latest.items():
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[task] = {int(r["doc_id"]): r for r in rows}
    return out


def load_arms(runs: list, names: list[str] | None = None) -> dict[str, dict[str, dict[int, dict]]]:
    """``{arm: {task: {doc_id: row}}}`` from one multi-arm run and/or several single-arm runs."""
    from lm_eval_tasks.arms.evaluate import split_task_name

    if names is not None and len(names) != len(runs):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(runs)} run(s)")
    arms: dict[str, dict] = {}
    for i, run in enumerate(runs):
        default = names[i] if names else (Path(run).stem if Path(run).is_file() else Path(run).resolve().name)
        for name, rows in load_samples(run).items():
            task, arm = split_task_name(name)
            arm = arm or default
            if task in arms.setdefault(arm, {}):
                raise ValueError(f"arm {arm!r} task {task!r} appears in two runs; name the runs apart with --names")
            arms[arm][task] = rows
    return dict(sorted(arms.items(), key=lambda kv: _arm_order(runs).get(kv[0], (1, kv[0]))))


def _arm_order(runs) -> dict:
    """Arms in the order of the run's own arms file (``arms_*.json`` beside the results), when there is one."""
    order = {}
    for run in runs:
        found = sorted(glob.glob(str(Path(run) / "**" / "arms_*.json"), recursive=True)) if Path(run).is_dir() else []
        if found:
            for i, arm in enumerate(json.loads(Path(found[-1]).read_text()).get("arms", [])):
                order.setdefault(arm["name"], (0, f"{i:06d}"))
    return order


def pick_baseline(arms: dict, baseline: str | None, first_run_arms: list[str]) -> str:
    if baseline is not None:
        if baseline not in arms:
            raise ValueError(f"--baseline {baseline!r} is not an arm of these runs; arms: {sorted(arms)}")
        return baseline
    if "baseline" in arms:
        return "baseline"
    return first_run_arms[0]


def compare_arms(arms: dict, baseline: str, tasks=None, n_boot: int = 10_000, seed: int = 0, correction: str = "holm",
                 alpha: float = 0.05) -> dict:
    """Every arm vs ``baseline`` on every shared task and metric, p-values adjusted across all of them."""
    from lm_eval_tasks.comparison.stats import adjust_rows, paired_test

    if len(arms) < 2:
        raise ValueError(f"need a baseline and at least one other arm, found {sorted(arms)}")
    base = arms[baseline]
    names = tasks or sorted(set.intersection(*(set(a) for a in arms.values())))
    if not names:
        raise ValueError(f"the arms share no task: {({a: sorted(t) for a, t in arms.items()})}")
    several = len(names) > 1
    out = {"baseline": baseline, "correction": correction, "alpha": alpha, "tasks": list(names), "arms": {}}
    flat = []
    for arm in [a for a in arms if a != baseline]:
        out["arms"][arm] = {}
        for task in names:
            if task not in base or task not in arms[arm]:
                raise ValueError(f"task {task!r} is missing from arm {baseline if task not in base else arm!r}")
            b, s = base[task], arms[arm][task]
            ids = sorted(set(b) & set(s))
            if not ids:
                raise ValueError(f"{task}: arms {baseline!r} and {arm!r} share no doc_id")
            mismatched = [i for i in ids if b[i].get("doc_hash") and s[i].get("doc_hash") and b[i]["doc_hash"] != s[i]["doc_hash"]]
            if mismatched:
                raise ValueError(f"{task}: doc_id(s) {mismatched[:5]} hold different problems in arms {baseline!r} and {arm!r} "
                                 "(doc_hash differs)")
            found = False
            for metric in METRICS:
                if all(metric in b[i] and metric in s[i] for i in ids):
                    r = paired_test([float(b[i][metric]) for i in ids], [float(s[i][metric]) for i in ids], n_boot, seed, alpha)
                    r["only_in_one_arm"] = len(set(b) ^ set(s))
                    r["task"], r["metric"] = task, metric
                    out["arms"][arm][f"{task}/{metric}" if several else metric] = r
                    flat.append(r)
                    found = True
            if not found:
                raise ValueError(f"{task}: no comparable metric (looked for {METRICS}) in arms {baseline!r} and {arm!r}")
    for r in flat:
        r["significant_unadjusted"] = r["significant"]
    adjust_rows(flat, correction, alpha)
    return out


def _rows(report: dict):
    for arm, metrics in report["arms"].items():
        for key, r in metrics.items():
            yield arm, key, r


def format_markdown(report: dict) -> str:
    from lm_eval_tasks.comparison.stats import CORRECTION_NAMES, result_cells, verdict_cell

    corr = CORRECTION_NAMES[report["correction"]]
    lines = [f"Each arm vs `{report['baseline']}`: mean per-problem difference, 95% bootstrap interval, paired sign-flip p, "
             f"{corr} adjustment over {sum(1 for _ in _rows(report))} comparisons (alpha {report['alpha']}).", "",
             "| arm | metric | baseline | arm | diff [95% CI] | p | p adjusted | n | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, key, r in _rows(report):
        lines.append(f"| {arm} | {key} | {r['baseline'][0]:.4g} | {r['steered'][0]:.4g} | {result_cells(r)} | {r['n']} | "
                     f"{verdict_cell(r)} |")
    return "\n".join(lines) + "\n"


def format_report(report: dict) -> str:
    lines = [format_markdown(report)]
    for arm, key, r in _rows(report):
        span = (f"{arm} {key}: {r['diff']:+.4g} (95% CI {r['diff_low']:+.4g} .. {r['diff_high']:+.4g}), "
                f"p = {r['p_value']:.3g}, adjusted p = {r['p_adjusted']:.3g}, n = {r['n']}")
        lines.append(span + (" -> a real difference" if r["significant"] else " -> INSIDE THE NOISE: no evidence of a difference"))
    return "\n".join(lines)


def plot_forest(report: dict, out: str | Path) -> Path:
    """Per arm: accuracy and reasoning-length differences vs the baseline with intervals and verdicts."""
    from reason_plugins.figures import pyplot, write_figure_atomic

    plt = pyplot()
    keys = [k for k in dict.fromkeys(k for _, k, _ in _rows(report)) if k.split("/")[-1] in ("exact_match", "reasoning_tokens")]
    arms = list(report["arms"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 1.2 + 0.45 * len(arms)), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for y, arm in enumerate(arms):
            r = report["arms"][arm].get(key)
            if r is None:
                continue
            color = "tab:red" if r["significant"] else "tab:gray"
            ax.errorbar(r["diff"], y, xerr=[[r["diff"] - r["diff_low"]], [r["diff_high"] - r["diff"]]], fmt="o", color=color, capsize=4)
            ax.annotate(f"p_adj {r['p_adjusted']:.2g}", (r["diff_high"], y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7, color=color)
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_yticks(range(len(arms)), arms, fontsize=8)
        ax.invert_yaxis()
        metric = key.split("/")[-1]
        ax.set_title(f"{key.rsplit('/', 1)[0] + ': ' if '/' in key else ''}{LABELS[metric]}\narm - {report['baseline']}", fontsize=9)
    fig.suptitle(f"95% bootstrap intervals; red = significant after {report['correction']} adjustment", fontsize=9)
    fig.tight_layout()
    return write_figure_atomic(fig, out, tight=False)


def sweep_points(report: dict) -> dict[int, list[tuple[float, str]]]:
    """``{feature: [(strength, arm), ...]}`` for arms named ``f<feature>_s<strength>`` (a sweep)."""
    points: dict[int, list] = {}
    for arm in report["arms"]:
        m = _SWEEP.match(arm)
        if m:
            points.setdefault(int(m.group(1)), []).append((float(m.group(2).replace("m", "-")), arm))
    return {f: sorted(v) for f, v in points.items()}


def plot_dose(report: dict, out: str | Path) -> Path | None:
    """Strength vs accuracy and reasoning length, one line per feature, the baseline dashed."""
    points = sweep_points(report)
    if not points:
        return None
    from reason_plugins.figures import pyplot, write_figure_atomic

    plt = pyplot()
    keys = [k for k in dict.fromkeys(k for _, k, _ in _rows(report)) if k.split("/")[-1] in ("exact_match", "reasoning_tokens")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        base = None
        for feature, pts in points.items():
            rows = [(s, report["arms"][arm][key]) for s, arm in pts if key in report["arms"][arm]]
            if not rows:
                continue
            xs = [s for s, _ in rows]
            ys = [r["steered"][0] for _, r in rows]
            err = [[r["steered"][0] - r["steered"][1] for _, r in rows], [r["steered"][2] - r["steered"][0] for _, r in rows]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"feature {feature}")
            for (s, r) in rows:
                if r["significant"]:
                    ax.scatter([s], [r["steered"][0]], s=120, facecolors="none", edgecolors="tab:red")
            base = rows[0][1]["baseline"][0]
        if base is not None:
            ax.axhline(base, color="black", ls="--", lw=0.8, label=report["baseline"])
        ax.set_xlabel("strength (x max activation)")
        ax.set_title(LABELS[key.split("/")[-1]] + (f" ({key.rsplit('/', 1)[0]})" if "/" in key else ""), fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("dose-response (95% intervals; red ring = significant after adjustment)", fontsize=9)
    fig.tight_layout()
    return write_figure_atomic(fig, out, tight=False)


def write_outputs(report: dict, out: str | Path) -> dict:
    """The forest plot at ``out``, ``.json`` / ``.md`` beside it, ``<stem>_dose.png`` for sweeps."""
    from reason_plugins.files import write_json_atomic, write_text_atomic

    out = Path(out)
    paths = {"forest": str(plot_forest(report, out))}
    paths["json"] = str(write_json_atomic(out.with_suffix(".json"), report))
    paths["markdown"] = str(write_text_atomic(out.with_suffix(".md"), format_markdown(report)))
    dose = plot_dose(report, out.with_name(out.stem + "_dose.png"))
    if dose is not None:
        paths["dose"] = str(dose)
    return paths
