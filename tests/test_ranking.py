"""Subgoal ranking (issue 19): accuracy against real BabyAI bot plans, the real embedded model, the noisy ranker."""

import numpy as np

import advice_eval
import prompts
from llmppo import advisers


def test_ranking_table_from_real_bot_plans_and_the_real_model(tmp_path):
    args = advice_eval.Args(subgoal_states=12, llm_n_threads=1, seed=2)
    states = advice_eval.collect_subgoal_states("BabyAI-KeyCorridorS3R1-v0", 12, 0.2, seed=2)
    assert len(states) == 12 and all(len(c) >= 2 and target in c for _, c, target, *_ in states)
    section, summary = advice_eval.evaluate_ranking(args, "BabyAI-KeyCorridorS3R1-v0", str(tmp_path))
    targets = [candidates.index(target) for _, candidates, target, *_ in states]
    assert summary["uniform (chance)"] == np.mean([1 / len(c) for _, c, *_ in states])
    assert summary["always 1st listed"] == np.mean(np.array(targets) == 0)
    for name in ("llm, listed order", "llm, cyclic order (position bias controlled)"):
        assert 0.0 <= summary[name] <= 1.0
    assert "position bias controlled" in section and "beats" in section


def test_cyclic_orders_average_every_position_back_onto_the_candidates(tmp_path):
    llm = prompts.LLMAdviser(cache_dir=str(tmp_path), n_threads=1, subgoal_orders="cyclic")
    text = "Goal: open the door. You see yellow key one forward one left, locked yellow door two forward. You carry nothing."
    candidates = ["go to the yellow key", "pick up the yellow key", "go to the locked yellow door"]
    debiased = llm.subgoal_probs(text, candidates)
    assert llm.stats["misses"] == 3  # one query per cyclic shift
    llm.subgoal_orders = "listed"
    by_shift = []
    for shift in range(3):
        shown = candidates[shift:] + candidates[:shift]
        probs = llm.subgoal_probs(text, shown)
        by_shift.append([probs[shown.index(c)] for c in candidates])
    assert llm.stats["misses"] == 3  # the same queries again: all cached
    np.testing.assert_allclose(debiased, np.mean(by_shift, axis=0), atol=1e-6)
    llm.close()


def test_the_noisy_ranker_puts_the_bots_subgoal_first_with_probability_p():
    states = advice_eval.collect_subgoal_states("BabyAI-KeyCorridorS3R1-v0", 300, 0.3, seed=5)
    for accuracy in (1.0, 0.6, 0.25):
        ranker = advisers.NoisyExpertAdviser(accuracy=accuracy, seed=1)
        hits = [int(np.argmax(ranker.subgoal_probs(text, candidates, [target])) == candidates.index(target))
                for text, candidates, target, *_ in states]
        tolerance = 3 * np.sqrt(accuracy * (1 - accuracy) / len(states)) + 1e-9
        assert abs(np.mean(hits) - accuracy) <= tolerance, (accuracy, np.mean(hits))
