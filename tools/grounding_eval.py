"""Fine-tuned models side by side: action agreement with the BabyAI bot and subgoal ranking with the position bias
controlled, on the levels they were trained on and on levels they never saw (benchmarks/grounding/README.md).

    python tools/grounding_eval.py --models zero-shot= grounded=~/models/smollm2-grounded.gguf

Each model is NAME=PATH (an empty PATH: the embedded SmolLM2). The states, the scoring and the controls are
tools/advice_eval.py's: bot-led rollouts of seed 1 (tools/ground_llm.py trains on other seeds' rollouts).
"""

import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advice_eval  # noqa: E402
from ground_llm import TRAIN_ENV_IDS  # noqa: E402
from llmppo.llama import resolve_model_path  # noqa: E402

HELD_OUT_ENV_IDS = ("BabyAI-UnlockLocal-v0", "BabyAI-KeyCorridorS3R1-v0", "BabyAI-PutNextLocal-v0")
DEBIASED = "llm, cyclic order (position bias controlled)"


@dataclass
class Args:
    models: tuple[str, ...]
    """the models as NAME=PATH (PATH empty: the embedded SmolLM2)"""
    train_env_ids: tuple[str, ...] = TRAIN_ENV_IDS
    """the levels the models were trained on"""
    held_out_env_ids: tuple[str, ...] = HELD_OUT_ENV_IDS
    """levels none of them was trained on"""
    num_states: int = 100
    """states per level for the action agreement"""
    subgoal_states: int = 60
    """states per level for the subgoal ranking"""
    llm_n_threads: int = 0
    """llama.cpp threads (0: all cores)"""
    output: str | None = None
    """also write the Markdown tables to this file"""


def table(title, levels, rows, n_train):
    short = lambda env_id: env_id.replace("BabyAI-", "").replace("-v0", "")
    lines = [f"**{title}**", "", "| | " + " | ".join(short(env_id) + (" (trained)" if i < n_train else " (held out)")
                                                      for i, env_id in enumerate(levels)) + " | mean trained | mean held out |",
             "|---" * (len(levels) + 3) + "|"]
    for name, values in rows.items():
        cells = [f"{value:.0%}" if value is not None else "-" for value in values]
        means = [np.mean([v for v in part if v is not None]) if any(v is not None for v in part) else None
                 for part in (values[:n_train], values[n_train:])]
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{m:.0%}" if m is not None else "-" for m in means) + " |")
    return "\n".join(lines + [""])


def main(args: Args) -> str:
    models = [model.split("=", 1) for model in args.models]
    if not models or any(len(model) != 2 for model in models):
        raise ValueError("--models takes NAME=PATH pairs, e.g. zero-shot= grounded=/path/to/grounded.gguf")
    for _, path in models:
        resolve_model_path(path or None)
    levels = list(args.train_env_ids) + list(args.held_out_env_ids)
    agreement, ranking = {}, {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, path in models:
            eval_args = advice_eval.Args(env_ids=tuple(levels), subgoal_env_ids=tuple(levels), llm_model_path=path or None,
                                         num_states=args.num_states, subgoal_states=args.subgoal_states,
                                         llm_n_threads=args.llm_n_threads or None, output=args.output)  # checked
            if (message := advice_eval.check_args(eval_args)):
                raise ValueError(message)
            for env_id in levels:
                _, summary = advice_eval.evaluate_env(eval_args, env_id, os.path.join(cache_dir, name), timed=False)
                agreement.setdefault(name, []).append(summary["agreement"])
                for control in ("always forward", "uniform"):
                    agreement.setdefault(control, {})[env_id] = summary[control]
                _, summary = advice_eval.evaluate_ranking(eval_args, env_id, os.path.join(cache_dir, name))
                ranking.setdefault(name, []).append(summary.get(DEBIASED))
                for control in ("uniform (chance)", "nearest first", "mission's object first"):
                    ranking.setdefault(control, {})[env_id] = summary.get(control)
                print(f"{name}: {env_id}: agreement {agreement[name][-1]:.0%}, ranking "
                      + (f"{ranking[name][-1]:.0%}" if ranking[name][-1] is not None else "-"), flush=True)
    for rows in (agreement, ranking):
        for name in rows:
            if isinstance(rows[name], dict):
                rows[name] = [rows[name].get(env_id) for env_id in levels]
    n_train = len(args.train_env_ids)
    report = "\n".join([
        table(f"Action agreement with the BabyAI bot ({args.num_states} states per level)", levels, agreement, n_train),
        table(f"Subgoal ranking, position bias controlled: the bot's next subgoal ranked first ({args.subgoal_states} "
              f"states per level)", levels, ranking, n_train)])
    print(report)
    if args.output:
        with open(args.output, "w") as report_file:
            report_file.write(report)
    return report


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no report written", file=sys.stderr)
        sys.exit(130)
