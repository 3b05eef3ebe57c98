"""``reason-sae compare BASELINE STEERED``: two lm-eval runs (``--log_samples`` output dirs, or their
``samples_*.jsonl`` files), problem by problem, with intervals and a paired test; prints a table,
says plainly when a difference is inside the noise, and plots both metrics (PNG).

Per task it compares ``exact_match`` (accuracy; pass@1 per problem with ``repeats``) and
``reasoning_tokens`` (our tasks' metric; ``total_tokens`` too when present). Problems are paired by
``doc_id`` and checked by ``doc_hash``: two runs over different problems are refused.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

METRICS = ("exact_match", "reasoning_tokens", "total_tokens")
LABELS = {"exact_match": "accuracy (pass@1)", "reasoning_tokens": "reasoning length (tokens)", "total_tokens": "total tokens"}
_SAMPLES = re.compile(r"^samples_(.+)_(\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")


def add_arguments(parser) -> None:
    from reason_plugins.cli_args import int_at_least

    parser.add_argument("baseline", help="lm-eval --output_path dir (or a samples_*.jsonl) of the baseline run")
    parser.add_argument("steered", help="the same for the steered run")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every task in both runs)")
    parser.add_argument("--out", default="compare.png", help="plot path (PNG); a .json with the numbers is written beside it")
    parser.add_argument("--n-boot", type=int_at_least(100), default=10_000, help="bootstrap resamples (>= 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")


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


def compare(baseline: dict, steered: dict, tasks=None, n_boot: int = 10_000, seed: int = 0) -> dict:
    """``{task: {metric: paired_test result}}`` over the problems both runs scored."""
    from lm_eval_tasks.stats import paired_test

    names = tasks or sorted(set(baseline) & set(steered))
    if not names:
        raise ValueError(f"the runs share no task: baseline has {sorted(baseline)}, steered has {sorted(steered)}")
    report = {}
    for task in names:
        if task not in baseline or task not in steered:
            raise ValueError(f"task {task!r} is missing from the {'baseline' if task not in baseline else 'steered'} run")
        b, s = baseline[task], steered[task]
        ids = sorted(set(b) & set(s))
        if not ids:
            raise ValueError(f"{task}: the runs share no doc_id")
        mismatched = [i for i in ids if b[i].get("doc_hash") and s[i].get("doc_hash") and b[i]["doc_hash"] != s[i]["doc_hash"]]
        if mismatched:
            raise ValueError(f"{task}: doc_id(s) {mismatched[:5]} hold different problems in the two runs (doc_hash differs)")
        report[task] = {}
        for metric in METRICS:
            if all(metric in b[i] and metric in s[i] for i in ids):
                result = paired_test([float(b[i][metric]) for i in ids], [float(s[i][metric]) for i in ids], n_boot, seed)
                result["only_in_one_run"] = len(set(b) ^ set(s))
                report[task][metric] = result
        if not report[task]:
            raise ValueError(f"{task}: no comparable metric (looked for {METRICS}) in the samples")
    return report


def plot(report: dict, out: str | Path) -> Path:
    from reason_plugins.figures import pyplot, write_figure_atomic

    plt = pyplot()
    metrics = [m for m in ("exact_match", "reasoning_tokens") if any(m in r for r in report.values())]
    tasks = list(report)
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(4.2 * len(tasks), 3.6 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            r = report[task].get(metric)
            if r is None:
                ax.set_axis_off()
                continue
            for x, (name, color) in enumerate((("baseline", "tab:gray"), ("steered", "tab:red"))):
                mean, lo, hi = r[name]
                ax.bar(x, mean, color=color, alpha=0.8)
                ax.errorbar(x, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=6)
            ax.set_xticks([0, 1], ["baseline", "steered"])
            ax.set_title(f"{task}\n{LABELS[metric]}", fontsize=9)
            note = "significant" if r["significant"] else "inside the noise"
            ax.text(0.5, 0.97, f"Δ {r['diff']:+.3g} [{r['diff_low']:+.3g}, {r['diff_high']:+.3g}]\np = {r['p_value']:.3g}, n = {r['n']}: {note}",
                    transform=ax.transAxes, ha="center", va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    fig.suptitle("baseline vs steered (95% bootstrap intervals over problems; paired sign-flip test)", fontsize=10)
    fig.tight_layout()
    return write_figure_atomic(fig, out, tight=False)


def format_report(report: dict) -> str:
    from lm_eval_tasks.stats import verdict

    lines = [f"{'task':<24}{'metric':<18}{'baseline [95% CI]':<28}{'steered [95% CI]':<28}{'p':>8}  verdict"]
    for task, metrics in report.items():
        for metric, r in metrics.items():
            cell = lambda m: f"{m[0]:.4g} [{m[1]:.4g}, {m[2]:.4g}]"  # noqa: E731
            lines.append(f"{task:<24}{metric:<18}{cell(r['baseline']):<28}{cell(r['steered']):<28}{r['p_value']:>8.3g}  "
                         f"{'significant' if r['significant'] else 'inside the noise'}")
    lines.append("")
    for task, metrics in report.items():
        lines += [f"{task}: {verdict(r, metric)}" for metric, r in metrics.items()]
    return "\n".join(lines)


def run(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    report = compare(load_samples(args.baseline), load_samples(args.steered), tasks, args.n_boot, args.seed)
    png = plot(report, args.out)
    Path(png).with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if not args.json:
        print(f"\nplot: {png}")
    return 0
