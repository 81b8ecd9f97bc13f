"""The counters every adviser keeps (its `stats`) and what the LLM scripts log of them: the llm/* TensorBoard scalars
and the end-of-run summary line (queries, cache hits, speed, fallbacks, a served LLM's requests, tokens and cost)."""

from __future__ import annotations

import sys


def new_stats() -> dict:
    return {"queries": 0, "memory_hits": 0, "disk_hits": 0, "misses": 0, "hit_rate": 0.0,
            "ms_per_uncached_query": 0.0, "tokens_evaluated": 0, "fallbacks": 0, "skipped": 0,
            # a served LLM's HTTP requests and token usage (0 for the others)
            "requests": 0, "retries": 0, "failed_requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def update_rates(stats: dict, uncached_seconds: float, prompt_tokens: int):
    """The LLM adviser's rates, from its counters, the time its backend took and the prompt tokens it was sent."""
    misses = max(stats["misses"], 1)
    stats["hit_rate"] = (stats["memory_hits"] + stats["disk_hits"]) / max(stats["queries"], 1)
    stats["ms_per_uncached_query"] = 1000 * uncached_seconds / misses
    stats["tokens_per_uncached_query"] = stats["tokens_evaluated"] / misses
    stats["prompt_tokens_per_query"] = prompt_tokens / misses


def write_llm_scalars(writer, stats: dict, queries_before: int, misses_before: int, llm_seconds: float, global_step: int,
                      usd_per_mtok: float = 0.0) -> tuple[int, int]:
    """The llm/* scalars both LLM scripts log after each update; returns the update's (queries, uncached queries)."""
    queries, misses = stats["queries"] - queries_before, stats["misses"] - misses_before
    writer.add_scalar("llm/queries", queries, global_step)
    writer.add_scalar("llm/uncached_queries", misses, global_step)
    writer.add_scalar("llm/cache_hit_rate", 1 - misses / queries if queries else 0.0, global_step)
    writer.add_scalar("llm/ms_per_query", 1000 * llm_seconds / max(queries, 1), global_step)
    writer.add_scalar("llm/ms_per_update", 1000 * llm_seconds, global_step)
    writer.add_scalar("llm/fallbacks", stats["fallbacks"], global_step)
    for name in ["requests", "retries", "prompt_tokens", "completion_tokens"]:  # a served LLM's usage, cumulative
        writer.add_scalar(f"llm/{name}", stats[name], global_step)
    if usd_per_mtok > 0:
        writer.add_scalar("llm/usd", usage_cost(stats, usd_per_mtok), global_step)
    warn_if_mostly_fallbacks(stats)
    return queries, misses


def warn_if_mostly_fallbacks(stats: dict, at_least: int = 32):
    """One warning line, while the run goes on, once most of the adviser's answers so far are fallbacks (uniform
    advice): e.g. a chat API whose first answer token is not an action word, or a server failing each query."""
    if not stats.get("warned_fallbacks") and stats["queries"] >= at_least and stats["fallbacks"] > stats["queries"] / 2:
        stats["warned_fallbacks"] = True
        print(f"warning: {stats['fallbacks']} of the adviser's {stats['queries']} answers so far fell back to uniform "
              "advice; with --llm-api chat try --llm-api completions, else check the server's log", file=sys.stderr,
              flush=True)


def adviser_summary(name: str, stats: dict, usd_per_mtok: float = 0.0) -> str:
    """The end-of-run line on the adviser: queries, cache hits, speed, fallbacks, agreement, a served LLM's usage."""
    skipped = stats.get("skipped", 0)  # no advice: over the query budget, or not asked after a Ctrl-C
    return (f"LLM adviser '{name}': {stats['queries']} queries, {stats['misses']} uncached"
            + (f", {skipped} without advice" if skipped else "")
            + f" (cache hit rate {1 - (stats['misses'] + skipped) / max(stats['queries'], 1):.3f}), "
            f"{stats.get('ms_per_uncached_query', 0.0):.0f} ms per uncached query, {stats['fallbacks']} fallbacks"
            + (f", agreed with the expert {stats['agreed'] / max(stats['queries'], 1):.3f}" if "agreed" in stats else "")
            + usage_summary(stats, usd_per_mtok))


def usage_cost(stats: dict, usd_per_mtok: float) -> float:
    return (stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)) * usd_per_mtok / 1e6


def usage_summary(stats: dict, usd_per_mtok: float = 0.0) -> str:
    """', 812 requests (3 retries), 140,000 prompt + 812 completion tokens, ~$0.03' for a served LLM; '' otherwise."""
    if not stats.get("requests"):
        return ""
    cost = f", ~${usage_cost(stats, usd_per_mtok):.4f}" if usd_per_mtok > 0 else ""
    return (f", {stats['requests']} requests ({stats['retries']} retries, {stats['failed_requests']} failed), "
            f"{stats['prompt_tokens']:,} prompt + {stats['completion_tokens']:,} completion tokens{cost}")

