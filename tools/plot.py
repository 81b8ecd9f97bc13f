"""Learning curves and results tables for a folder written by tools/benchmark.py.

    python tools/plot.py benchmarks/smoke
    python tools/plot.py benchmarks/main --threshold 0.8 --tag charts/rolling_return

Reads <folder>/runs/<key>/result.json (what each finished run printed) and the TensorBoard events next to it, and
writes <folder>/curves.png (one panel per env, one line per variant, mean ± std over seeds) and <folder>/results.md
(one row per env and variant, then the zero-shot and transfer runs if there are any). Unfinished runs are left out.
"""

import glob
import json
import os
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize_runs import first_reach, read_scalars  # noqa: E402


@dataclass
class Args:
    folder: tyro.conf.Positional[str]
    """a benchmark output folder (the --out of tools/benchmark.py)"""
    threshold: float = 0.9
    """frames to threshold: the first point of the curve at or above this value"""
    tag: str = "auto"
    """scalar for the curves and frames to threshold; auto: eval/episodic_return (the actor alone, without the LLM)
    where every run of an env has an eval curve (--eval-every), else charts/rolling_return"""


VARIANT_ORDER = ["baseline", "policy+expert", "policy+llm", "policy+uniform", "policy+random", "explore+expert",
                 "explore+llm", "explore+uniform", "explore+random"]
TAG_LABELS = {
    "eval/episodic_return": "eval return, actor alone (no LLM)",
    "charts/rolling_return": "training return, last 100 episodes\n(policy with the adviser)",
}
TAG_SHORT = {"eval/episodic_return": "eval", "charts/rolling_return": "rolling"}


def load_runs(folder):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "result.json"))):
        with open(path) as f:
            run = json.load(f)
        # The scripts write their events into a subfolder of --run-dir named after the env, script, seed and time.
        events = sorted(glob.glob(os.path.join(os.path.dirname(path), "*", "events.out.tfevents.*")))
        run["scalars"] = read_scalars(os.path.dirname(events[-1])) if events else {}
        runs.append(run)
    return runs


def variant_rank(variant):
    return (VARIANT_ORDER.index(variant), "") if variant in VARIANT_ORDER else (len(VARIANT_ORDER), variant)


def group(runs, fields):
    """{(run[field] for field in fields): [runs]}, envs sorted by name and variants in VARIANT_ORDER."""
    groups = {}
    for run in runs:
        groups.setdefault(tuple(run.get(field) for field in fields), []).append(run)
    return dict(sorted(groups.items(), key=lambda item: [variant_rank(v) if f == "variant" else (0, str(v))
                                                           for f, v in zip(fields, item[0])]))


def curve_tag(runs, tag):
    if tag != "auto":
        return tag
    # One eval point (the final one) is not a curve: fall back to the training return for the whole env.
    has_eval_curve = all(len(run["scalars"].get("eval/episodic_return", [])) >= 2 for run in runs)
    return "eval/episodic_return" if has_eval_curve else "charts/rolling_return"


def mean_std_curve(runs, tag):
    curves = [np.array(run["scalars"][tag]) for run in runs if run["scalars"].get(tag)]
    if not curves:
        return None
    # Seeds of one variant log at the same frames; interpolating onto the longest run's frames also covers runs
    # that logged at other frames (e.g. a rolling return that starts after the first finished episode).
    frames = max(curves, key=len)[:, 0]
    values = np.stack([np.interp(frames, curve[:, 0], curve[:, 1]) for curve in curves])
    return frames, values.mean(0), values.std(0), len(curves)


def kframes(frames):
    return f"{frames / 1000:.1f}k"


def mean_std(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def mean_of(values, fmt):
    values = [v for v in values if v is not None]
    return format(np.mean(values), fmt) if values else "-"


def plot_curves(train_groups, tags, threshold, path):
    envs = list(dict.fromkeys(env for env, _ in train_groups))
    cols = min(len(envs), 3)
    rows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, env in zip(axes.flat, envs):
        tag = tags[env]
        for (env_id, variant), runs in train_groups.items():
            curve = mean_std_curve(runs, tag) if env_id == env else None
            if curve is None:
                continue
            frames, mean, std, seeds = curve
            color = colors(variant_rank(variant)[0] % 10)
            marker = "o" if len(frames) <= 30 else None  # sparse eval points: show where they are
            style = "--" if variant.startswith("explore") else "-"  # the two families apart where colors are close
            label = f"{variant} ({seeds} seed{'s' * (seeds > 1)})"
            ax.plot(frames, mean, color=color, linestyle=style, marker=marker, markersize=3, label=label)
            ax.fill_between(frames, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
        if tag.endswith("return") or tag.endswith("success_rate"):
            ax.set_ylim(-0.03, 1.03)  # MiniGrid returns and success rates live in [0, 1]
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
        ax.set(title=env, xlabel="frames", ylabel=TAG_LABELS.get(tag, tag))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(envs):]:
        ax.axis("off")
    fig.suptitle("learning curves: mean over seeds, shaded ± std", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_table(train_groups, tags, threshold):
    lines = [f"| env | variant | seeds | final eval return (LLM-free) | success rate | frames to ≥ {threshold:g} | curve "
             "| FPS | LLM queries | cache hit rate | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (env, variant), runs in train_groups.items():
        tag = tags[env]
        reached = [frames for frames in (first_reach(run["scalars"].get(tag, []), threshold) for run in runs)
                   if frames is not None]
        to_threshold = f"{kframes(np.mean(reached)) if reached else '-'} ({len(reached)}/{len(runs)})"
        lines.append(
            f"| {env} | {variant} | {len(runs)} | {mean_std([r.get('eval_return') for r in runs])} "
            f"| {mean_of([r.get('eval_success') for r in runs], '.2f')} | {to_threshold} | {TAG_SHORT.get(tag, tag)} "
            f"| {mean_of([r.get('fps') for r in runs], ',.0f')} | {mean_of([r.get('llm_queries') for r in runs], ',.0f')} "
            f"| {mean_of([r.get('cache_hit_rate') for r in runs], '.3f')} "
            f"| {mean_of([r.get('wall_seconds') for r in runs], '.0f')} |"
        )
    return lines


def zeroshot_table(runs):
    lines = ["| env | adviser | runs | episodes | success rate | mean return |", "|---|---|---|---|---|---|"]
    for (env, variant), group_runs in group(runs, ["env_id", "variant"]).items():
        episodes = sum(r.get("eval_episodes") or 0 for r in group_runs)
        lines.append(f"| {env} | {variant.replace('zeroshot+', '')} | {len(group_runs)} | {episodes} "
                     f"| {mean_std([r.get('eval_success') for r in group_runs], 2)} "
                     f"| {mean_std([r.get('eval_return') for r in group_runs])} |")
    return lines


def transfer_table(runs):
    lines = ["| train env → eval env | variant | seeds | zero-shot return | zero-shot success | fine-tune frames "
             "| after fine-tune return | after fine-tune success |", "|---|---|---|---|---|---|---|---|"]
    for (source, target, variant), group_runs in group(runs, ["source_env", "env_id", "variant"]).items():
        evals = [r for r in group_runs if r["kind"] == "transfer-eval"]
        tuned = [r for r in group_runs if r["kind"] == "transfer-finetune"]
        lines.append(f"| {source} → {target} | {variant} | {len({r['seed'] for r in group_runs})} "
                     f"| {mean_std([r.get('eval_return') for r in evals])} "
                     f"| {mean_of([r.get('eval_success') for r in evals], '.2f')} "
                     f"| {mean_of([r.get('frames') for r in tuned], ',.0f')} "
                     f"| {mean_std([r.get('eval_return') for r in tuned])} "
                     f"| {mean_of([r.get('eval_success') for r in tuned], '.2f')} |")
    return lines


def make_report(folder, threshold=0.9, tag="auto"):
    """Write curves.png and results.md into `folder`; returns the Markdown text."""
    runs = load_runs(folder)
    train = [run for run in runs if run["kind"] == "train"]
    train_groups = group(train, ["env_id", "variant"])
    tags = {env: curve_tag([r for r in train if r["env_id"] == env], tag) for env in {r["env_id"] for r in train}}
    name = os.path.basename(os.path.normpath(folder))
    md = [f"# Benchmark results: {name}", "",
          f"{len(runs)} finished runs; regenerate with `python tools/plot.py {folder}`.", ""]
    if train:
        plot_curves(train_groups, tags, threshold, os.path.join(folder, "curves.png"))
        md += [
            "Final eval return: the actor alone, without the adviser, over `--eval-episodes` episodes at the end of "
            "training (mean ± std over seeds). Frames to threshold: the first point of the curve named in the column "
            "*curve* (eval: periodic evaluations of the actor alone; rolling: training return of the last 100 "
            "episodes) at or above the threshold, averaged over the seeds that reached it (reached/seeds). FPS counts "
            "the periodic evaluations' time; LLM queries (per run, cached ones included) and wall time are means over "
            "seeds.", "", *results_table(train_groups, tags, threshold), "", "![learning curves](curves.png)", ""]
    zeroshot = [run for run in runs if run["kind"] == "zeroshot"]
    if zeroshot:
        md += ["## Zero-shot: the adviser itself as the policy (no training)", "", *zeroshot_table(zeroshot), ""]
    transfer = [run for run in runs if run["kind"].startswith("transfer")]
    if transfer:
        md += ["## Transfer: a checkpoint evaluated on another level, then fine-tuned there", "",
               "Zero-shot: the trained actor on the new level as is; after fine-tune: evaluated at the end of "
               "fine-tuning there (the same variant's script and adviser).", "", *transfer_table(transfer), ""]
    text = "\n".join(md)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not os.path.isdir(os.path.join(args.folder, "runs")):
        sys.exit(f"error: {args.folder} holds no runs/ folder (is it the --out of tools/benchmark.py?)")
    print(make_report(args.folder, args.threshold, args.tag))
    print(f"\nwrote {os.path.join(args.folder, 'results.md')} and {os.path.join(args.folder, 'curves.png')}")
