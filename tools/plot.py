"""Learning curves and results tables for a folder written by tools/benchmark.py.

    python tools/plot.py benchmarks/smoke
    python tools/plot.py benchmarks/main --threshold 0.8 --tag charts/rolling_return

Reads <folder>/runs/<key>/result.json (what each finished run printed) and the TensorBoard events next to it, and
writes <folder>/curves.png (one panel per env, one line per variant, mean ± std over seeds) and <folder>/results.md
(one row per env and variant, then the zero-shot and transfer runs if there are any). Unfinished runs are left out.

When the runs include noisy-expert variants (labels like policy+noisy0.6, explore+noisy0.6, and policy+uniform as the
no-information point; the `study` preset of tools/benchmark.py), it also writes <folder>/accuracy.png (frames to
threshold of the actor alone relative to the baseline, and its late return (the mean of its last evaluations),
against the adviser's accuracy, with real LLMs' measured accuracy as dashed lines) and <folder>/study.md (the table and the break-even accuracy):

    python tools/plot.py benchmarks/study --model-accuracy accuracy.json    # {"SmolLM2-135M": 0.29, ...}

The study's part (accuracy.png, study.md) is in tools/plot_study.py.
"""

import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize_runs import first_reach, read_scalars  # noqa: E402
from plot_study import (STUDY_TAGS, TAG_SHORT, kframes, load_model_accuracy, mean_of, mean_std,  # noqa: E402
                        model_markers, plot_accuracy, study_data, study_markdown, study_thresholds)
from plot_study import worst_case  # noqa: E402, F401 (plot.worst_case, as before the split)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llmppo.checks import float_flag_error  # noqa: E402


@dataclass
class Args:
    folder: tyro.conf.Positional[str]
    """a benchmark output folder (the --out of tools/benchmark.py)"""
    threshold: float = 0.9
    """frames to threshold: the first point of the curve at or above this value"""
    tag: str = "auto"
    """scalar for the curves and frames to threshold (the accuracy study's too, with eval/episodic_return or
    eval/success_rate); auto: eval/episodic_return (the actor alone, without the LLM) where every run of an env has an
    eval curve (--eval-every), else charts/rolling_return"""
    model_accuracy: Optional[str] = None
    """accuracy study: JSON file of real models' top-1 agreement with the BabyAI bot (tools/advice_eval.py), drawn as
    dashed lines in accuracy.png: {"SmolLM2-135M": 0.29} for every level, or {"BabyAI-GoToLocal-v0": {"name": 0.29}}
    per level; default: MODEL_ACCURACY (the README's SmolLM2 and Gemma-3 numbers)"""
    study_threshold: tuple[str, ...] = ()
    """accuracy study: per-level thresholds as ENV=VALUE (e.g. BabyAI-GoToLocal-v0=0.5), over STUDY_THRESHOLDS;
    levels not named there use --threshold"""


VARIANT_ORDER = ["baseline", "policy+expert", "policy+llm", "policy+uniform", "policy+random", "explore+expert",
                 "explore+llm", "explore+uniform", "explore+random"]
TAG_LABELS = {
    "eval/episodic_return": "eval return, actor alone (no LLM)",
    "eval/success_rate": "eval success rate, actor alone (no LLM)",
    "charts/rolling_return": "training return, last 100 episodes\n(policy with the adviser)",
}


def fail(message):
    """Bad input: one line on stderr naming what to do, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_runs(folder):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "result.json"))):
        try:
            with open(path) as f:
                run = json.load(f)
            if not isinstance(run, dict) or not {"kind", "env_id", "variant"} <= run.keys():
                raise ValueError("not a result of tools/benchmark.py")
        except (OSError, ValueError) as error:  # half-written or damaged: that run counts as not run
            print(f"warning: {path} is unreadable ({type(error).__name__}: {error}); skipping that run", file=sys.stderr)
            continue
        # The scripts write their events into a subfolder of --run-dir named after the env, script, seed and time.
        events = sorted(glob.glob(os.path.join(os.path.dirname(path), "*", "events.out.tfevents.*")))
        run["scalars"] = read_scalars(os.path.dirname(events[-1])) if events else {}
        runs.append(run)
    return runs


NOISY_VARIANT = re.compile(r"(policy|explore)\+noisy([\d.]+)")


def variant_rank(variant):
    if variant in VARIANT_ORDER:
        return VARIANT_ORDER.index(variant), 0.0, ""
    if match := NOISY_VARIANT.fullmatch(variant):  # right after the family's expert, the most accurate first
        return VARIANT_ORDER.index(f"{match.group(1)}+expert"), 2.0 - float(match.group(2)), ""
    return len(VARIANT_ORDER), 0.0, variant


def variant_color(variant, others=()):
    """Black for the baseline, tab10 by VARIANT_ORDER, noisy-expert variants by their accuracy (viridis: dark =
    accurate); the labels in `others` (those of a plot not in VARIANT_ORDER, e.g. baseline-lr5e-4) by their place there."""
    if variant == "baseline":
        return "black"
    if match := NOISY_VARIANT.fullmatch(variant):
        return plt.get_cmap("viridis")(0.85 * (1.0 - min(float(match.group(2)), 1.0)))
    if variant in others:
        return plt.get_cmap("tab10")((len(VARIANT_ORDER) + list(others).index(variant)) % 10)
    return plt.get_cmap("tab10")(variant_rank(variant)[0] % 10)


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




def plot_curves(train_groups, tags, threshold, path):
    envs = list(dict.fromkeys(env for env, _ in train_groups))
    others = sorted({variant for _, variant in train_groups if variant_rank(variant)[0] == len(VARIANT_ORDER)})
    cols = min(len(envs), 3)
    rows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        tag = tags[env]
        for (env_id, variant), runs in train_groups.items():
            curve = mean_std_curve(runs, tag) if env_id == env else None
            if curve is None:
                continue
            frames, mean, std, seeds = curve
            color = variant_color(variant, others)
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
        lines = len(ax.get_legend_handles_labels()[0])
        ax.legend(fontsize=8 if lines <= 8 else 6, loc="best", ncol=1 if lines <= 8 else 2)
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


def reeval_table(runs):
    """Final checkpoints evaluated again (tools/benchmark.py reeval_runs): one row per env, variant and action choice."""
    lines = ["| env | variant | actions | seeds | episodes per seed | success rate, per seed | return, per seed "
             "| return (mean ± std) | mean length |", "|---|---|---|---|---|---|---|---|---|"]
    for (env, variant, mode), group_runs in group(runs, ["env_id", "variant", "eval_mode"]).items():
        group_runs = sorted(group_runs, key=lambda r: r["seed"])

        def per_seed(field):
            return " / ".join("-" if r.get(field) is None else f"{r[field]:.3f}" for r in group_runs)

        lines.append(f"| {env} | {variant} | {mode} | {len(group_runs)} "
                     f"| {mean_of([r.get('eval_episodes') for r in group_runs], '.0f')} "
                     f"| {per_seed('eval_success')} | {per_seed('eval_return')} "
                     f"| {mean_std([r.get('eval_return') for r in group_runs])} "
                     f"| {mean_of([r.get('eval_length') for r in group_runs], '.1f')} |")
    return lines


def shown_path(folder):
    """The folder as typed from the repository root when it is inside it (no machine-specific absolute path)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    relative = os.path.relpath(os.path.abspath(folder), root)
    return folder if relative.startswith("..") else relative



def make_report(folder, threshold=0.9, tag="auto", model_accuracy=None, thresholds=()):
    """Write curves.png and results.md into `folder` (and accuracy.png and study.md if the runs include noisy-expert
    variants); returns the Markdown text of results.md and the files written, or (None, []) when no run can be read.
    `model_accuracy`: a JSON file (see Args); `thresholds`: ENV=VALUE overrides of STUDY_THRESHOLDS for the study."""
    runs = load_runs(folder)
    if not runs:  # an empty report must not replace the one a finished benchmark wrote
        return None, []
    written = []
    train = [run for run in runs if run["kind"] == "train"]
    train_groups = group(train, ["env_id", "variant"])
    tags = {env: curve_tag([r for r in train if r["env_id"] == env], tag) for env in {r["env_id"] for r in train}}
    name = os.path.basename(os.path.normpath(folder))
    md = [f"# Benchmark results: {name}", "",
          f"{len(runs)} finished runs; regenerate with `python tools/plot.py {shown_path(folder)}`.", ""]
    if train:
        plot_curves(train_groups, tags, threshold, os.path.join(folder, "curves.png"))
        written.append(os.path.join(folder, "curves.png"))
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
    reeval = [run for run in runs if run["kind"] == "reeval"]
    if reeval:
        md += ["## The final checkpoints evaluated again", "",
               "Each training run's agent.pt alone over more episodes, the same levels for both rows: sampled from its "
               "policy, as the curves' evaluations are, and its most probable action (`--eval-argmax`, as BabyAI's own "
               "training script validates).", "", *reeval_table(reeval), ""]
    # The accuracy study needs periodic evaluations of the actor alone (frames to threshold, late return).
    if any(NOISY_VARIANT.fullmatch(run["variant"]) and tags[run["env_id"]] in STUDY_TAGS for run in train):
        table = load_model_accuracy(model_accuracy)
        data = study_data(train, tags, study_thresholds(train, threshold, tags, thresholds))
        plot_accuracy(data, lambda env: model_markers(table, env), os.path.join(folder, "accuracy.png"))
        with open(os.path.join(folder, "study.md"), "w") as f:
            f.write(study_markdown(data, lambda env: model_markers(table, env), name))
        written += [os.path.join(folder, "accuracy.png"), os.path.join(folder, "study.md")]
        md += ["## Advice accuracy study", "", "Frames to threshold and late return against the adviser's accuracy, "
               "and the break-even accuracy: [study.md](study.md).", "", "![accuracy](accuracy.png)", ""]
    text = "\n".join(md)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(text)
    return text, [os.path.join(folder, "results.md"), *written]


if __name__ == "__main__":
    args = tyro.cli(Args)
    if (message := float_flag_error(args)):
        fail(message)
    if not os.path.isdir(os.path.join(args.folder, "runs")):
        fail(f"{args.folder} holds no runs/ folder (is it the --out of tools/benchmark.py?)")
    if args.model_accuracy is not None and not os.path.isfile(args.model_accuracy):
        fail(f"--model-accuracy {args.model_accuracy}: no such file")
    text, written = make_report(args.folder, args.threshold, args.tag, args.model_accuracy, args.study_threshold)
    if text is None:
        fail(f"no run under {os.path.join(args.folder, 'runs')} can be read (each needs the result.json that "
             "tools/benchmark.py writes when a run finishes): nothing was replaced")
    print(text)
    print(f"\nwrote {', '.join(written)}")
