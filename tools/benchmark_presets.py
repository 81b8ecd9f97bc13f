"""The benchmark presets: which runs each preset of tools/benchmark.py runs, and where it writes them.

A run is a dict: key (its folder name under <out>/runs/), kind (train, zeroshot, transfer-eval, transfer-finetune,
reeval), script, variant, env_id, seed, flags (after the per-run ones: --env-id, --seed, --run-dir, --torch-threads),
and `after` (the key of the run whose checkpoint it needs) for a run that starts from another's agent.pt. The results
of each preset are on the page named in the comment line above it; none are kept here.
"""

import os


def preset_folder(name):
    """A preset's default output folder: benchmarks/<name>/."""
    return os.path.join("benchmarks", name)


# label -> (script, flags). The variant flags come last on the command line, after the per-run ones.
VARIANTS = {
    "baseline": ("ppo_baseline.py", []),
    "policy+expert": ("ppo_llm_policy.py", ["--advisor", "expert"]),
    "policy+llm": ("ppo_llm_policy.py", ["--advisor", "llm"]),
    "policy+uniform": ("ppo_llm_policy.py", ["--advisor", "uniform"]),
    "policy+random": ("ppo_llm_policy.py", ["--advisor", "random"]),
    "explore+expert": ("ppo_llm_explore.py", ["--advisor", "expert"]),
    "explore+llm": ("ppo_llm_explore.py", ["--advisor", "llm"]),
    "explore+uniform": ("ppo_llm_explore.py", ["--advisor", "uniform"]),
}
# made by tools/ground_llm.py, as benchmarks/grounding/README.md says (not part of this repository)
GROUNDED_MODEL = "~/.cache/minigrid-llm-ppo/smollm2-grounded-2k.gguf"
VARIANTS["policy+grounded"] = ("ppo_llm_policy.py", ["--advisor", "llm", "--llm-model-path", GROUNDED_MODEL])
VARIANTS["explore+grounded"] = ("ppo_llm_explore.py", ["--advisor", "llm", "--llm-model-path", GROUNDED_MODEL])
# the control: the same network trained from random weights on the same examples (--init random)
RANDOM_INIT_MODEL = "~/.cache/minigrid-llm-ppo/smollm2-random-init-2k.gguf"
VARIANTS["policy+random-init"] = ("ppo_llm_policy.py", ["--advisor", "llm", "--llm-model-path", RANDOM_INIT_MODEL])
# an adviser of known accuracy near the grounded model's agreement with the bot on UnlockLocal: its place on that axis
VARIANTS["policy+noisy-expert0.5"] = ("ppo_llm_policy.py", ["--advisor", "noisy-expert", "--advice-accuracy", "0.5"])
CHECKPOINT = "{checkpoint}"  # replaced by the dependency's agent.pt once it has finished


def short(env_id):
    return env_id.replace("MiniGrid-", "").replace("BabyAI-", "").replace("-v0", "")


def expert_ok(variant, env_id):
    # The BabyAI bot only plans BabyAI levels; the scripts refuse --advisor expert elsewhere (exit 2).
    return "expert" not in variant or env_id.startswith("BabyAI-")


def train_runs(variants, env_id, seeds, frames, eval_every, eval_episodes, extra=()):
    runs = []
    for variant in variants:
        if not expert_ok(variant, env_id):
            continue
        script, variant_flags = VARIANTS[variant]
        for seed in seeds:
            flags = ["--total-timesteps", str(frames), "--eval-every", str(eval_every),
                     "--eval-episodes", str(eval_episodes), *extra, *variant_flags]
            runs.append(dict(key=f"{short(env_id)}__{variant}__s{seed}", kind="train", script=script,
                             variant=variant, env_id=env_id, seed=seed, flags=flags))
    return runs


def zeroshot_runs(advisers, env_id, episodes, seed=1, extra=()):
    """The adviser itself as the policy, no training (ppo_llm_policy.py --llm-only)."""
    runs = []
    for adviser in advisers:
        if not expert_ok(adviser, env_id):
            continue
        argmax = ["--eval-argmax"] if adviser == "expert" else []  # the bot's plan, as in the README's table
        flags = ["--llm-only", "--advisor", adviser, "--eval-episodes", str(episodes), *argmax, *extra]
        runs.append(dict(key=f"{short(env_id)}__zeroshot+{adviser}__s{seed}", kind="zeroshot", script="ppo_llm_policy.py",
                         variant=f"zeroshot+{adviser}", env_id=env_id, seed=seed, flags=flags))
    return runs


def transfer_runs(variants, source, target, seeds, frames, fine_tune_frames, eval_every, eval_episodes, extra=()):
    """Train on `source` with --save-model; then evaluate that checkpoint on `target` and fine-tune it there."""
    runs = train_runs(variants, source, seeds, frames, eval_every, eval_episodes, ["--save-model", *extra])
    for train in list(runs):
        script, variant_flags = VARIANTS[train["variant"]]
        name = f"{short(source)}-to-{short(target)}__{train['variant']}__s{train['seed']}"
        common = dict(script=script, variant=train["variant"], env_id=target, source_env=source, seed=train["seed"],
                      after=train["key"])
        runs.append(common | dict(key=f"{name}__eval", kind="transfer-eval", flags=[
            "--checkpoint", CHECKPOINT, "--eval-episodes", str(eval_episodes), *extra, *variant_flags]))
        runs.append(common | dict(key=f"{name}__finetune", kind="transfer-finetune", flags=[
            "--checkpoint", CHECKPOINT, "--fine-tune", "--total-timesteps", str(fine_tune_frames), "--eval-every",
            str(eval_every), "--eval-episodes", str(eval_episodes), *extra, *variant_flags]))
    return runs


def reeval_runs(train, episodes):
    """Each training run's final checkpoint (the run needs --save-model) evaluated again over `episodes` episodes, on
    the same levels twice: sampled from its policy, as the periodic evaluations are, and its most probable action
    (--eval-argmax), as BabyAI's own training script validates its agents."""
    runs = []
    for run in train:
        _, variant_flags = VARIANTS[run["variant"]]
        for mode, argmax in [("sampled", []), ("argmax", ["--eval-argmax"])]:
            runs.append(dict(key=f"{run['key']}__eval-{mode}", kind="reeval", eval_mode=mode, script=run["script"],
                             variant=run["variant"], env_id=run["env_id"], seed=run["seed"], after=run["key"],
                             flags=["--checkpoint", CHECKPOINT, "--eval-episodes", str(episodes), *argmax, *variant_flags]))
    return runs


def study_runs(env_id, accuracies, seeds, frames, eval_every, eval_episodes, extra=(), uniform=True,
               distill_coef="0.1", explore=True):
    """Issue 8, "how good must the LLM be to help?": the noisy expert (the BabyAI bot's action with probability p,
    else a uniformly chosen wrong allowed action, 0.8 of the probability on the advised action) at each accuracy p,
    plus the uniform adviser, through both mechanisms; and the baseline. Labels carry p ('policy+noisy0.6',
    'explore+uniform'), and result.json gets `mechanism` and `advice_accuracy` (a float, or "uniform"), which
    tools/plot.py reads for accuracy.png and study.md.

    Policy guidance uses --distill-coef 0.1 for every adviser, uniform included, at the scripts' default --llm-coef 0.5
    and --llm-anneal-frac 0.25 (distill_coef="1.0" for the first version of the study, preset study-distill1.0). With
    distillation the uniform adviser is not quite the baseline (the KL to a uniform prior is an early entropy bonus on
    the actor): it is the same mechanism with advice that carries no information.

    The exploration bonus uses --bonus-mode action --bonus-coef 0.003 --bonus-anneal-frac 0.25 (the adviser's top
    action, when taken, pays 0.003 per step, annealed to 0 over the first quarter of training, like the policy's
    prior), on both levels, rather than the ELLM subgoal bonus (benchmarks/study/README.md says why not a larger one).
    Why not the subgoal bonus:
    - GoToObj has a single object, so the subgoal bonus has one candidate, which the noisy expert can only rank first:
      p would change nothing and the curve would be flat by construction;
    - the accuracy axis is the top-1 agreement of an adviser's *action* with the bot's, which is what
      tools/advice_eval.py measures for real LLMs, so both mechanisms can be read against the same model markers.
    The uniform adviser has no unique top action, so in action mode it never pays: explore+uniform is the explore
    script without a bonus, a control that should match the baseline."""
    mechanisms = {"policy": ("ppo_llm_policy.py", ["--distill-coef", distill_coef]),
                  "explore": ("ppo_llm_explore.py", ["--bonus-mode", "action", "--bonus-coef", "0.003",
                                                       "--bonus-anneal-frac", "0.25"])}
    if not explore:
        del mechanisms["explore"]
    advisers = [(f"noisy{p}", p, ["--advisor", "noisy-expert", "--advice-accuracy", str(p)]) for p in accuracies]
    if uniform:
        advisers.append(("uniform", "uniform", ["--advisor", "uniform"]))
    runs = train_runs(["baseline"], env_id, seeds, frames, eval_every, eval_episodes, extra)
    for mechanism, (script, mechanism_flags) in mechanisms.items():
        for name, accuracy, adviser_flags in advisers:
            variant = f"{mechanism}+{name}"
            for seed in seeds:
                flags = ["--total-timesteps", str(frames), "--eval-every", str(eval_every),
                         "--eval-episodes", str(eval_episodes), *extra, *mechanism_flags, *adviser_flags]
                runs.append(dict(key=f"{short(env_id)}__{variant}__s{seed}", kind="train", script=script,
                                 variant=variant, env_id=env_id, seed=seed, flags=flags, mechanism=mechanism,
                                 advice_accuracy=accuracy))
    return runs


def ranking_runs(env_id, accuracies, seeds, frames, eval_every, eval_episodes, llm_seeds=(), noisy_seeds=None, extra=(),
                 llm_orders=("listed", "cyclic")):
    """Issue 19, "does a small LLM know which subgoal matters?": the explore script's subgoal bonus (its defaults) with a
    noisy subgoal ranker of known quality (the bot plan's next subgoal on top with probability p, else another
    candidate) at each p on `noisy_seeds` (default: `seeds`), the uniform ranking and the baseline on `seeds`; and
    SmolLM2's ranking as listed and/or with its position bias controlled (--llm-subgoal-orders cyclic, `llm_orders`) on
    `llm_seeds`. Labels and result.json fields as study_runs (mechanism 'explore'), so tools/plot.py draws accuracy.png
    and study.md."""
    noisy_seeds = seeds if noisy_seeds is None else noisy_seeds
    runs = [run for run in study_runs(env_id, accuracies, sorted(set(seeds) | set(noisy_seeds)), frames, eval_every,
                                      eval_episodes, extra, explore=True)
            if not run["variant"].startswith("policy+")
            and run["seed"] in (noisy_seeds if "noisy" in run["variant"] else seeds)]
    for run in runs:  # the subgoal bonus at the explore script's defaults, not study_runs' action bonus
        if run["variant"].startswith("explore+"):
            run["flags"] = [flag for flag in run["flags"] if flag not in ("--bonus-mode", "action", "--bonus-coef",
                                                                          "0.003", "--bonus-anneal-frac", "0.25")]
    for orders in llm_orders:
        variant = "explore+llm" if orders == "listed" else "explore+llm-cyclic"
        for seed in llm_seeds:
            flags = ["--total-timesteps", str(frames), "--eval-every", str(eval_every), "--eval-episodes",
                     str(eval_episodes), *extra, "--advisor", "llm", "--llm-subgoal-orders", orders]
            runs.append(dict(key=f"{short(env_id)}__{variant}__s{seed}", kind="train", script="ppo_llm_explore.py",
                             variant=variant, env_id=env_id, seed=seed, flags=flags))
    return runs


GUIDED = ["baseline", "policy+expert", "policy+llm", "policy+uniform", "explore+expert", "explore+llm"]
STUDY_ACCURACIES = [1.0, 0.8, 0.6, 0.4, 0.25]
# 8 envs x 32 steps: more updates (and eval points) out of the tiny preset's 2048 frames.
TINY = ["--num-envs", "8", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2"]
TINY_TRANSFER = transfer_runs(["baseline"], "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0", [1], 2048, 1024, 4, 3, TINY)

PRESETS = {
    # reported on no page: the tests' preset (tests/test_benchmark.py), every kind of run once
    "tiny": [
        *TINY_TRANSFER,
        *reeval_runs(TINY_TRANSFER[:1], 3),
        *train_runs(["policy+llm"], "MiniGrid-DoorKey-5x5-v0", [1], 2048, 4, 3, TINY),
        *zeroshot_runs(["llm"], "MiniGrid-DoorKey-5x5-v0", 2, extra=["--num-envs", "2"]),
    ],
    # reported on no page: a quick check that every variant runs (README.md's preset table)
    "smoke": [
        *train_runs(GUIDED, "MiniGrid-DoorKey-5x5-v0", [1, 2], 30_720, 10, 16),
        *train_runs(GUIDED, "BabyAI-GoToObj-v0", [1, 2], 30_720, 10, 16),
        *zeroshot_runs(["llm", "uniform", "expert"], "MiniGrid-DoorKey-5x5-v0", 16),
        *zeroshot_runs(["llm", "uniform", "expert"], "BabyAI-GoToObj-v0", 16),
    ],
    # reported on benchmarks/main/README.md
    "main": [
        *train_runs(GUIDED + ["policy+random", "explore+uniform"], "MiniGrid-DoorKey-5x5-v0", [1, 2, 3], 60_000, 10, 32),
        *train_runs(GUIDED + ["explore+uniform"], "BabyAI-GoToObj-v0", [1, 2, 3], 40_000, 5, 32),
        *train_runs(GUIDED + ["explore+uniform"], "BabyAI-KeyCorridorS3R1-v0", [1, 2, 3], 100_000, 20, 32),
        *train_runs(GUIDED + ["explore+uniform"], "BabyAI-UnlockLocal-v0", [1, 2, 3], 100_000, 20, 32),
        *[run for env_id in ["MiniGrid-DoorKey-5x5-v0", "BabyAI-GoToObj-v0", "BabyAI-KeyCorridorS3R1-v0",
                             "BabyAI-UnlockLocal-v0"]
          for run in zeroshot_runs(["llm", "uniform", "expert"], env_id, 50)],
    ],
    # reported on benchmarks/grounding/README.md: SmolLM2 fine-tuned on the bot's answers, on levels it never saw
    "grounding": [
        *train_runs(["policy+grounded", "explore+grounded", "policy+noisy-expert0.5", "policy+random-init"],
                    "BabyAI-UnlockLocal-v0", [1, 2, 3], 100_000, 20, 32),
        *train_runs(["policy+grounded"], "BabyAI-KeyCorridorS3R1-v0", [1, 2, 3], 100_000, 20, 32),
        *zeroshot_runs(["llm"], "BabyAI-UnlockLocal-v0", 50, extra=["--llm-model-path", GROUNDED_MODEL]),
    ],
    # reported on benchmarks/transfer-small/README.md (not run yet)
    "transfer": [
        *transfer_runs(["baseline", "policy+expert", "policy+llm"], "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0",
                       [1, 2, 3], 80_000, 100_000, 20, 100),
        *transfer_runs(["baseline", "policy+expert", "policy+llm"], "BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0",
                       [1, 2, 3], 150_000, 100_000, 20, 100),
    ],
    # reported on benchmarks/transfer-small/README.md
    "transfer-small": [
        *transfer_runs(["baseline", "policy+llm", "explore+llm"], "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0",
                       [1, 2], 60_000, 100_000, 20, 32),
        *transfer_runs(["baseline", "policy+expert"], "BabyAI-GoToObj-v0", "BabyAI-GoToLocal-v0",
                       [1, 2], 40_000, 60_000, 20, 32),
    ],
    # reported on benchmarks/study/README.md
    "study": [
        *study_runs("BabyAI-GoToObj-v0", STUDY_ACCURACIES, [1, 2, 3], 40_000, 5, 32),
        *study_runs("BabyAI-GoToLocal-v0", STUDY_ACCURACIES, [1, 2, 3], 100_000, 5, 32),
    ],
    # reported on benchmarks/study/README.md
    "study-final-check": [
        *[run for run in study_runs("BabyAI-GoToLocal-v0", [0.6, 0.4], [1, 2, 3], 100_000, 0, 500)
          if run["variant"] in ("baseline", "policy+uniform", "policy+noisy0.6", "explore+noisy0.4")],
        *[run for run in study_runs("BabyAI-GoToObj-v0", [0.25], [4, 5, 6], 40_000, 0, 500)
          if run["variant"] in ("baseline", "explore+noisy0.25")],
    ],
    # reported on benchmarks/study-gotolocal/README.md (which says why evaluations come this often)
    "study-gotolocal": study_runs("BabyAI-GoToLocal-v0", [1.0, 0.6, 0.4, 0.25], [1, 2, 3], 300_000, 10, 32,
                                  uniform=False),
    # reported on benchmarks/study/README.md
    "study-distill1.0": study_runs("BabyAI-GoToObj-v0", STUDY_ACCURACIES, [1, 2, 3], 40_000, 5, 32,
                                   distill_coef="1.0", explore=False),
    # reported on benchmarks/ranking/README.md
    "ranking": [
        *ranking_runs("BabyAI-KeyCorridorS3R1-v0", [1.0, 0.6, 0.3], [1, 2, 3, 4, 5], 100_000, 20, 32, [1, 2, 3, 4, 5],
                      noisy_seeds=[1, 2, 3]),
        *ranking_runs("BabyAI-UnlockLocal-v0", [1.0, 0.6, 0.3], [1, 2, 3, 4, 5], 100_000, 20, 32, [1, 2, 3, 4, 5],
                      noisy_seeds=[1, 2, 3], llm_orders=("cyclic",)),
        *ranking_runs("BabyAI-UnlockPickup-v0", [1.0, 0.6, 0.3], [1, 2, 3], 100_000, 20, 32),
    ],
    # reported on benchmarks/agent/README.md: the five levels of issue 34 at the defaults, at its budgets and seeds
    "agent": [
        *train_runs(["baseline"], "BabyAI-PickupLoc-v0", [1, 2, 3], 2_000_000, 0, 500),
        *train_runs(["baseline"], "BabyAI-GoToLocal-v0", [1, 2, 3], 1_000_000, 0, 500),
        *train_runs(["baseline"], "MiniGrid-DoorKey-8x8-v0", [1, 2, 3, 4, 5, 6], 300_000, 20, 32),
        *train_runs(["baseline"], "BabyAI-KeyCorridorS3R1-v0", [1, 2, 3], 150_000, 10, 32),
        *train_runs(["baseline"], "MiniGrid-DoorKey-5x5-v0", [1, 2, 3], 80_000, 0, 32),  # no evaluations: the plain command's stream
    ],
    # reported on benchmarks/agent-doorkey8x8-explore/README.md
    "agent-doorkey8x8-explore": train_runs(["baseline", "explore+uniform", "explore+llm"], "MiniGrid-DoorKey-8x8-v0",
                                           [1, 2, 3, 4, 5, 6], 300_000, 20, 32),
    # reported on benchmarks/study-check-gotoobj/README.md
    "study-check-gotoobj": [run for run in study_runs("BabyAI-GoToObj-v0", [0.6], [4, 5, 6, 7, 8, 9], 40_000, 0, 500)
                            if run["variant"] in ("baseline", "explore+noisy0.6")],
    # reported on no page: the tests' preset (tests/test_benchmark.py), the study's runs once
    "study-tiny": study_runs("BabyAI-GoToObj-v0", [1.0, 0.25], [1], 1024, 1, 4, TINY, uniform=False),
}

