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
TAG_SHORT = {"eval/episodic_return": "eval", "eval/success_rate": "eval success", "charts/rolling_return": "rolling"}
# What the accuracy study can measure frames to (the actor alone's periodic evaluations); its late return, for the
# 5% rule, is always the evaluation return.
STUDY_TAGS = {"eval/episodic_return": "return", "eval/success_rate": "success rate"}


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


# -----------------------------------------------------------------------------------------------------
# Accuracy study (issue 8: how good must the LLM be to help?): accuracy.png and study.md
# -----------------------------------------------------------------------------------------------------
# Within the study's GoToLocal budget the earlier, memoryless agent plateaued far below 0.9 but passed 0.4 early:
# frames to 0.4 measures how fast the part it can learn is learnt (benchmarks/study/README.md).
STUDY_THRESHOLDS = {"BabyAI-GoToLocal-v0": 0.4}
# Real models' top-1 agreement with the BabyAI bot: the README's "Advisers" table (tools/advice_eval.py,
# SmolLM2-135M-Instruct Q4_1, 100 states per level from bot-led rollouts with 20% random actions).
MODEL_ACCURACY = {
    "BabyAI-GoToLocal-v0": {"SmolLM2-135M": 0.29, "Gemma-3-270M": 0.29},
    "BabyAI-PickupLoc-v0": {"SmolLM2-135M": 0.18, "Gemma-3-270M": 0.18},
    "BabyAI-UnlockLocal-v0": {"SmolLM2-135M": 0.06, "Gemma-3-270M": 0.16},
    "BabyAI-OpenDoor-v0": {"SmolLM2-135M": 0.18, "Gemma-3-270M": 0.18},
}
# Levels without a measurement borrow the closest measured one (same allowed actions, same kind of mission); the
# plot and study.md name the level a number comes from.
MODEL_ACCURACY_FROM = {"BabyAI-GoToObj-v0": "BabyAI-GoToLocal-v0"}
# The uniform adviser's top-1 agreement as tools/advice_eval.py counts it: ties split over all 7 actions.
UNIFORM_ACCURACY = 1 / 7
MECHANISM_STYLES = {"policy": ("tab:orange", "-"), "explore": ("tab:green", "--")}  # dashed: explore, as in curves.png
STUDY_VARIANT = re.compile(r"(policy|explore)\+(?:noisy([\d.]+)|(uniform))")


def study_info(run):
    """(mechanism, accuracy) of a run of the accuracy study: ('policy', 0.6), ('explore', 'uniform'); else None.
    Read from result.json (`mechanism`, `advice_accuracy`, written by the study preset), else from the label."""
    if run.get("mechanism") in ("policy", "explore") and run.get("advice_accuracy") is not None:
        accuracy = run["advice_accuracy"]
        return run["mechanism"], accuracy if accuracy == "uniform" else float(accuracy)
    if match := STUDY_VARIANT.fullmatch(run.get("variant", "")):
        return match.group(1), float(match.group(2)) if match.group(2) else "uniform"
    return None


def accuracy_x(accuracy):
    return UNIFORM_ACCURACY if accuracy == "uniform" else accuracy


def load_model_accuracy(path):
    """{env_id or None (every level): {model: accuracy}} from the JSON file, or MODEL_ACCURACY."""
    if path is None:
        return dict(MODEL_ACCURACY)
    with open(path) as f:
        data = json.load(f)
    table = {None: {name: float(value) for name, value in data.items() if not isinstance(value, dict)}}
    table |= {env: {name: float(value) for name, value in models.items()} for env, models in data.items()
              if isinstance(models, dict)}
    return table


def model_markers(table, env_id):
    """[(model, accuracy, level it was measured on or None)] for one level: its own entries and the file's
    every-level ones; a level with neither borrows MODEL_ACCURACY_FROM's level."""
    markers = [(name, value, env_id) for name, value in table.get(env_id, {}).items()]
    markers += [(name, value, None) for name, value in table.get(None, {}).items() if name not in table.get(env_id, {})]
    if markers:
        return markers
    source = MODEL_ACCURACY_FROM.get(env_id)
    return [(name, value, source) for name, value in table.get(source, {}).items()]


def run_budget(run, tag):
    points = run["scalars"].get(tag, [])
    return max([run.get("frames") or 0] + [step for step, _ in points])


def frames_to(run, tag, threshold):
    """(frames to threshold, reached): a run that never reached it counts at its budget."""
    frames = first_reach(run["scalars"].get(tag, []), threshold)
    return (frames, True) if frames is not None else (run_budget(run, tag), False)


LATE_FRACTION = 0.2  # "late return": the mean of the evaluations in the last 20% of a run's frames


def late_return(run, tag, budget):
    """Mean of the run's evaluations after (1 - LATE_FRACTION) of the budget: several evaluations together, so less
    noisy than the final one alone (32 episodes of a level that is solved half the time: ±0.08)."""
    values = [value for step, value in run["scalars"].get(tag, []) if step >= (1 - LATE_FRACTION) * budget]
    return float(np.mean(values)) if values else None


def study_data(train, tags, thresholds):
    """Per level: threshold, baseline numbers and one entry per (mechanism, accuracy) with per-seed values."""
    data = {}
    budgets = {}
    for run in train:
        budgets[run["env_id"]] = max(budgets.get(run["env_id"], 0), run_budget(run, tags[run["env_id"]]))
    for env in sorted({run["env_id"] for run in train if study_info(run)}, key=lambda env: (budgets[env], env)):
        tag, threshold = tags[env], thresholds[env]
        baseline = [run for run in train if run["env_id"] == env and run["variant"] == "baseline"]
        base = [frames_to(run, tag, threshold) for run in baseline]
        base_mean = float(np.mean([frames for frames, _ in base])) if base else None
        late = [late_return(run, "eval/episodic_return", budgets[env]) for run in baseline]
        entry = dict(tag=tag, threshold=threshold, base_mean=base_mean, base=base,
                     base_returns=[r["eval_return"] for r in baseline if r.get("eval_return") is not None],
                     base_late=[value for value in late if value is not None], budget=max(budgets[env], 1), points={})
        for run in train:
            info = study_info(run) if run["env_id"] == env else None
            if info is None:
                continue
            point = entry["points"].setdefault(info, dict(frames=[], reached=[], returns=[], late=[], agreement=[]))
            if (late := late_return(run, "eval/episodic_return", budgets[env])) is not None:
                point["late"].append(late)
            frames, reached = frames_to(run, tag, threshold)
            point["frames"].append(frames)
            point["reached"].append(reached)
            if run.get("eval_return") is not None:
                point["returns"].append(run["eval_return"])
            if run.get("agreed_with_expert") is not None:
                point["agreement"].append(run["agreed_with_expert"])
        for point in entry["points"].values():
            point["ratios"] = [frames / base_mean for frames in point["frames"]] if base_mean else []
        data[env] = entry
    return data


def sorted_points(entry, mechanism):
    """[(accuracy, point)] of one mechanism, uniform first, then by accuracy."""
    points = [(accuracy, point) for (mech, accuracy), point in entry["points"].items() if mech == mechanism]
    return sorted(points, key=lambda item: accuracy_x(item[0]))


def worst_case(entry, mechanism):
    """One sentence: the adviser accuracy whose actor ended furthest below the baseline, and whether that breaks the
    5% rule."""
    if not entry["base_late"]:
        return f"**{mechanism}**: no baseline late return to compare with."
    base = np.mean(entry["base_late"])
    points = [(p, np.mean(point["late"]), np.std(point["late"])) for p, point in sorted_points(entry, mechanism)
              if point["late"]]
    if not points:
        return f"**{mechanism}**: no late return to compare with."
    p, late, std = min(points, key=lambda item: item[1])
    name = "uniform" if p == "uniform" else f"p = {p:g}"
    verdict = "within 5%" if late >= 0.95 * base else "**more than 5% below: a defect**"
    change = f"{late / base - 1:+.1%}" if base > 0 else "baseline at 0: no relative change"
    return (f"**{mechanism}**: lowest at {name}: {late:.3f} ± {std:.3f} against the baseline's {base:.3f} ± "
            f"{np.std(entry['base_late']):.3f} ({change}), {verdict}")


def break_even(entry, mechanism):
    """One sentence: the smallest tested accuracy at which the mean frames-to-threshold ratio is < 1, and where the
    ±1 std band crosses 1."""
    points = [(p, np.mean(point["ratios"]), np.std(point["ratios"])) for p, point in sorted_points(entry, mechanism)
              if p != "uniform" and point["ratios"]]
    if not points:
        return f"**{mechanism}**: no noisy-expert runs with a baseline to compare with."
    smallest = lambda helps: next((p for p, mean, std in points if helps(mean, std)), None)  # noqa: E731
    p_mean, p_maybe, p_sure = smallest(lambda m, s: m < 1), smallest(lambda m, s: m - s < 1), smallest(
        lambda m, s: m + s < 1)
    ratios = ", ".join(f"{mean:.2f} at p = {p:g}" for p, mean, _ in points)
    if p_maybe is None:
        band = "±1 std: mean − std ≥ 1 at every tested p"
    elif p_sure is None:
        band = f"±1 std: mean − std < 1 from p = {p_maybe:g}, but mean + std < 1 at no tested p"
    elif p_maybe == p_sure:
        lower = [p for p, _, _ in points if p < p_sure]
        band = (f"±1 std: the band is below 1 from p = {p_sure:g} and " + (
            f"above 1 at p = {lower[-1]:g}" if lower else "no lower p was tested"))
    else:
        band = (f"±1 std: break-even between p = {p_maybe:g} (the smallest p with mean − std < 1) and "
                f"p = {p_sure:g} (the smallest with mean + std < 1)")
    if p_mean is None:
        return f"**{mechanism}**: no break-even within the tested accuracies (mean ratio {ratios}); {band}."
    below = [(p, mean) for p, mean, _ in points if p < p_mean]
    if below:
        p_low, m_low = below[-1]
        m_high = next(mean for p, mean, _ in points if p == p_mean)
        crossing = p_low + (m_low - 1) / (m_low - m_high) * (p_mean - p_low)
        where = f"{p_mean:g} (linear interpolation between p = {p_low:g} and {p_mean:g}: ≈ {crossing:.2f})"
    else:
        where = f"≤ {p_mean:g} (the lowest tested accuracy already helps)"
    above = [f"{mean:.2f} at p = {p:g}" for p, mean, _ in points if p > p_mean and mean >= 1]
    caveat = f"; not monotone: the ratio is back at ≥ 1 at higher accuracy ({', '.join(above)})" if above else ""
    return f"**{mechanism}**: break-even accuracy {where}; mean ratio {ratios}; {band}{caveat}."


def plot_accuracy(data, markers, path):
    envs = list(data)
    fig, axes = plt.subplots(len(envs), 2, figsize=(11.5, 4.1 * len(envs)), squeeze=False)
    for (ax_frames, ax_return), env in zip(axes, envs):
        entry = data[env]
        scale = entry["base_mean"] or 1000.0  # no baseline: plot frames (k) instead of the ratio
        for ax, key in [(ax_frames, "frames"), (ax_return, "late")]:
            for offset, mechanism in [(-0.006, "policy"), (0.006, "explore")]:
                (color, style), points = MECHANISM_STYLES[mechanism], sorted_points(entry, mechanism)
                curve = []
                for accuracy, point in points:
                    values = np.array(point[key], dtype=float) / (scale if key == "frames" else 1.0)
                    if not len(values):
                        continue
                    x = accuracy_x(accuracy) + offset
                    marker = "s" if accuracy == "uniform" else "o"
                    ax.errorbar(x, values.mean(), yerr=values.std(), color=color, marker=marker, markersize=6,
                                capsize=3, linestyle="none", zorder=3)
                    reached = np.array(point["reached"]) if key == "frames" else np.ones(len(values), bool)
                    ax.scatter(np.full(reached.sum(), x), values[reached], color=color, s=10, alpha=0.5, zorder=2)
                    if (~reached).any():  # never reached the threshold: plotted at the budget, open triangles
                        ax.scatter(np.full((~reached).sum(), x), values[~reached], facecolors="none",
                                   edgecolors=color, marker="^", s=40, zorder=4)
                        ax.annotate(f"{reached.sum()}/{len(reached)} reached", (x, values.mean()), xytext=(7, -3),
                                    textcoords="offset points", fontsize=7, color=color)
                    if accuracy != "uniform":
                        curve.append((x, values.mean()))
                if curve:
                    ax.plot(*zip(*curve), color=color, linestyle=style, label=f"{mechanism} + noisy expert")
                if any(p == "uniform" for p, _ in points):
                    ax.plot([], [], color=color, marker="s", linestyle="none", label=f"{mechanism} + uniform")
            if key == "frames":
                if entry["base_mean"]:
                    base = np.array([frames for frames, _ in entry["base"]]) / scale
                    ax.axhline(1.0, color="black", linewidth=1.2, label="baseline (mean, shaded ± std)")
                    ax.axhspan(1.0 - base.std(), 1.0 + base.std(), color="grey", alpha=0.15, linewidth=0)
                if not all(all(point["reached"]) for point in entry["points"].values()):  # else it only squashes
                    ax.axhline(entry["budget"] / scale, color="grey", linestyle=":", linewidth=1)
                    ax.annotate("budget (△: threshold never reached)", (0.01, entry["budget"] / scale), fontsize=7,
                                color="grey", xycoords=("axes fraction", "data"), xytext=(0, 3),
                                textcoords="offset points")
                    ax.set_ylim(0, max(ax.get_ylim()[1], 1.1 * entry["budget"] / scale))  # room for the label
                else:
                    ax.set_ylim(0, max(ax.get_ylim()[1], 1.5))
                measure = STUDY_TAGS[entry["tag"]]
                ylabel = (f"frames to eval {measure} ≥ {entry['threshold']:g}\n/ baseline mean "
                          f"({kframes(entry['base_mean'])})" if entry["base_mean"] else
                          f"frames (k) to eval {measure} ≥ {entry['threshold']:g}")
                ax.set(title=f"{env}: frames to threshold, actor alone", ylabel=ylabel)
            else:
                if entry["base_late"]:
                    mean, std = np.mean(entry["base_late"]), np.std(entry["base_late"])
                    ax.axhline(mean, color="black", linewidth=1.2, label="baseline (mean, shaded ± std)")
                    ax.axhspan(mean - std, mean + std, color="grey", alpha=0.15, linewidth=0)
                ax.set_ylim(-0.03, 1.03)
                ax.set(title=f"{env}: late return, actor alone",
                       ylabel=f"eval return (no adviser), mean over\nthe last {LATE_FRACTION:.0%} of training")
            same_value = {}  # models at the same accuracy share one line and one label
            for name, value, source in markers(env):
                same_value.setdefault((value, source), []).append(name)
            for (value, source), names in same_value.items():
                ax.axvline(value, color="tab:purple", linestyle="--", linewidth=1)
                label = f"{', '.join(names)}\n{value:.0%}" + (f" (measured on {short_env(source)})"
                                                               if source and source != env else "")
                ax.annotate(label, (value, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                            color="tab:purple", xytext=(-2, 0), textcoords="offset points", ha="right", va="bottom")
            ticks = sorted({accuracy_x(p) for _, p in entry["points"]})
            ax.set_xticks(ticks, ["uniform\n(1/7)" if t == UNIFORM_ACCURACY else f"{t:g}" for t in ticks])
            ax.set_xlim(0.08, 1.05)
            ax.set_xlabel("adviser accuracy: top-1 agreement with the BabyAI bot")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("advice accuracy vs benefit: mean ± std over seeds (dots: seeds); dashed: real LLMs' measured "
                 "agreement", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shown_path(folder):
    """The folder as typed from the repository root when it is inside it (no machine-specific absolute path)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    relative = os.path.relpath(os.path.abspath(folder), root)
    return folder if relative.startswith("..") else relative


def short_env(env_id):
    return env_id.replace("MiniGrid-", "").replace("BabyAI-", "").replace("-v0", "")


def frames_cell(point):
    frames, reached = np.array(point["frames"]), np.array(point["reached"])
    bound = "≥ " if not reached.all() else ""
    spread = f" ± {kframes(frames.std())}" if len(frames) > 1 else ""
    return f"{bound}{kframes(frames.mean())}{spread} ({reached.sum()}/{len(reached)})"


def ratio_cell(point):
    if not point["ratios"]:
        return "-"
    bound = "≥ " if not all(point["reached"]) else ""
    ratios = point["ratios"]
    return f"{bound}{np.mean(ratios):.2f}" + (f" ± {np.std(ratios):.2f}" if len(ratios) > 1 else "")


def study_markdown(data, markers, name):
    md = [f"# Advice accuracy study: {name}", "",
          "How good must the adviser be to help? The noisy expert gives the BabyAI bot's action with probability p "
          "(else a uniformly chosen wrong allowed action), with 0.8 of its probability on the advised action; the "
          "uniform adviser (no information) sits at p = 1/7, its top-1 agreement as tools/advice_eval.py counts it "
          "(ties split over the 7 actions). On levels with 3 allowed actions (GoTo*), chance among them is 1/3: a "
          "noisy expert below that is worse than a random guess among the sensible actions.", "",
          "Frames to threshold: the first periodic evaluation of the actor alone (no adviser) with mean return (or "
          "success rate, where the level's heading says *eval success*) at or above the level's threshold; a run "
          "that never reached it counts at its budget, so the mean is then a lower bound (≥; reached/seeds in "
          "brackets). Ratio: frames over the baseline's mean (counted the same way); < 1 means the adviser helped. "
          "Final return: the actor alone at the end of training. Late return: the mean of its evaluations in the last "
          f"{LATE_FRACTION:.0%} of the budget (less noisy than the final one alone). Measured agreement: how often "
          "the advice given during training was the bot's action (the adviser's own count).", ""]
    for env, entry in data.items():
        base = entry["base"]
        base_text = (f"baseline {kframes(entry['base_mean'])}"
                     + (f" ± {kframes(np.std([f for f, _ in base]))}" if len(base) > 1 else "")
                     + f" frames ({sum(r for _, r in base)}/{len(base)} reached)"
                     + (f", final return {mean_std(entry['base_returns'])}" if entry["base_returns"] else "")
                     + (f", late return {mean_std(entry['base_late'])}" if entry["base_late"] else "")
                     if base else "no baseline runs: no ratios")
        md += [f"## {env}: threshold {entry['threshold']:g} ({TAG_SHORT.get(entry['tag'], entry['tag'])}), budget "
               f"{kframes(entry['budget'])} frames; {base_text}", ""]
        mechanisms = [m for m in ("policy", "explore") if sorted_points(entry, m)]
        header = ["advice accuracy p"] + [f"{m}: {col}" for m in mechanisms for col in (
            f"frames to ≥ {entry['threshold']:g}", "ratio to baseline", "final return", "late return",
            "measured agreement")]
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        accuracies = sorted({p for _, p in entry["points"]}, key=lambda p: -accuracy_x(p))
        for p in accuracies:
            cells = ["uniform (1/7)" if p == "uniform" else f"{p:g}"]
            for mechanism in mechanisms:
                point = entry["points"].get((mechanism, p))
                if point is None:
                    cells += ["-"] * 5
                    continue
                cells += [frames_cell(point), ratio_cell(point), mean_std(point["returns"]), mean_std(point["late"]),
                          mean_of(point["agreement"], ".2f")]
            md.append("| " + " | ".join(cells) + " |")
        md += ["", "Break-even accuracy: the smallest tested p at which the mean frames-to-threshold ratio is below 1 "
               "(ratios with runs that never reached the threshold are lower bounds).", ""]
        md += [f"- {break_even(entry, mechanism)}" for mechanism in mechanisms]
        md += ["", "A bad adviser must not leave the actor more than 5% below the baseline (late return, mean over "
               "seeds):", ""]
        md += [f"- {worst_case(entry, mechanism)}" for mechanism in mechanisms]
        models = markers(env)
        if models:
            md += ["", "Real models (dashed lines in accuracy.png): " + "; ".join(
                f"{model} {value:.2f}" + (f" (measured on {source})" if source else "") for model, value, source in
                models) + "."]
        md.append("")
    md += ["![accuracy](accuracy.png)", ""]
    return "\n".join(md)


def study_thresholds(train, threshold, tags, overrides=()):
    """Per level: STUDY_THRESHOLDS (return thresholds: only where the level's tag is the eval return), then ENV=VALUE
    overrides, else `threshold`."""
    table = {env: value for env, value in STUDY_THRESHOLDS.items() if tags.get(env) == "eval/episodic_return"}
    for item in overrides:
        env, _, value = item.partition("=")
        try:
            table[env] = float(value)
        except ValueError:
            raise ValueError(f"study threshold {item!r}: expected ENV=VALUE, e.g. BabyAI-GoToLocal-v0=0.5") from None
    return {env: table.get(env, threshold) for env in {run["env_id"] for run in train}}


def make_report(folder, threshold=0.9, tag="auto", model_accuracy=None, thresholds=()):
    """Write curves.png and results.md into `folder` (and accuracy.png and study.md if the runs include noisy-expert
    variants); returns the Markdown text of results.md. `model_accuracy`: a JSON file (see Args); `thresholds`:
    ENV=VALUE overrides of STUDY_THRESHOLDS for the study."""
    runs = load_runs(folder)
    train = [run for run in runs if run["kind"] == "train"]
    train_groups = group(train, ["env_id", "variant"])
    tags = {env: curve_tag([r for r in train if r["env_id"] == env], tag) for env in {r["env_id"] for r in train}}
    name = os.path.basename(os.path.normpath(folder))
    md = [f"# Benchmark results: {name}", "",
          f"{len(runs)} finished runs; regenerate with `python tools/plot.py {shown_path(folder)}`.", ""]
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
        md += ["## Advice accuracy study", "", "Frames to threshold and late return against the adviser's accuracy, "
               "and the break-even accuracy: [study.md](study.md).", "", "![accuracy](accuracy.png)", ""]
    text = "\n".join(md)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not os.path.isdir(os.path.join(args.folder, "runs")):
        fail(f"{args.folder} holds no runs/ folder (is it the --out of tools/benchmark.py?)")
    if args.model_accuracy is not None and not os.path.isfile(args.model_accuracy):
        fail(f"--model-accuracy {args.model_accuracy}: no such file")
    print(make_report(args.folder, args.threshold, args.tag, args.model_accuracy, args.study_threshold))
    written = [name for name in ("results.md", "curves.png", "study.md", "accuracy.png")
               if os.path.exists(os.path.join(args.folder, name))]
    print(f"\nwrote {', '.join(os.path.join(args.folder, name) for name in written)}")
