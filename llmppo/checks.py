"""Checks of number flags shared by the scripts and the tools (kept free of heavy imports: the plotting tools use it)."""

import dataclasses
import math

MAX_SEED = 2**32 - 1
POSITIVE, AT_LEAST_0 = (lambda x: x > 0, "a positive number"), (lambda x: x >= 0, "a number, 0 or more")
FROM_0_TO_1, ABOVE_0_TO_1 = (lambda x: 0 <= x <= 1, "a number in [0, 1]"), (lambda x: 0 < x <= 1, "a number in (0, 1]")
# The range of each float flag of the scripts and tools (any other float flag must just be a finite number).
FLOAT_FLAGS = {
    "learning_rate": POSITIVE, "gamma": ABOVE_0_TO_1, "gae_lambda": FROM_0_TO_1, "clip_coef": POSITIVE,
    "ent_coef": AT_LEAST_0, "vf_coef": AT_LEAST_0, "max_grad_norm": POSITIVE, "target_kl": POSITIVE,
    "advice_accuracy": FROM_0_TO_1, "llm_coef": AT_LEAST_0, "llm_anneal_frac": ABOVE_0_TO_1, "distill_coef": AT_LEAST_0,
    "bonus_coef": AT_LEAST_0, "bonus_anneal_frac": ABOVE_0_TO_1, "llm_temperature": POSITIVE, "llm_max_rps": AT_LEAST_0,
    "llm_timeout": POSITIVE, "llm_usd_per_mtok": AT_LEAST_0, "random_action_prob": FROM_0_TO_1,
}


def float_flag_error(args):
    """The first float flag of `args` (a script's or tool's Args) that is not a finite number in its range, as one
    line naming it; None when all are. NaN and infinity pass most comparisons, so each is tested for both."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if not isinstance(value, float):
            continue
        in_range, wanted = FLOAT_FLAGS.get(field.name, (lambda x: True, "a finite number"))
        if not (math.isfinite(value) and in_range(value)):
            return f"--{field.name.replace('_', '-')} must be {wanted}, got {value}"
    return None
