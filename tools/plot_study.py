"""tools/plot.py's advice-accuracy study (issue 8: how good must the LLM be to help?): accuracy.png and study.md.

make_report in tools/plot.py calls study_data, plot_accuracy and study_markdown when a folder's runs include
noisy-expert variants (the `study` presets). The number formatting at the top is shared with plot.py's tables.
"""

import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize_runs import first_reach  # noqa: E402

TAG_SHORT = {"eval/episodic_return": "eval", "eval/success_rate": "eval success", "charts/rolling_return": "rolling"}
# What the accuracy study can measure frames to (the actor alone's periodic evaluations); its late return, for the
# 5% rule, is always the evaluation return.
STUDY_TAGS = {"eval/episodic_return": "return", "eval/success_rate": "success rate"}


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
