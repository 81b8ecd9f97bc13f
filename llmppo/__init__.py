"""The machinery behind prompts.py (the language layer), one module per job:

- llama.py: the GGUF model file (the embedded SmolLM2 by default), its checks and loading, LlamaBackend (in process);
- server.py: the OpenAI-compatible HTTP client and ServerBackend (the same adviser, served);
- answer_cache.py: the memory and disk caches of raw LLM answers;
- advisers.py: the expert, uniform, random and noisy-expert advisers, and make_adviser();
- llm_flags.py: the scripts' LLM deployment flags (LLMFlags), their checks, and the adviser built from them;
- llm_logging.py: the advisers' counters, the llm/* scalars and the end-of-run summary line;
- bot.py: the env side: the BabyAI bot's actions and plan, the subgoals achieved, the bonus weights;
- flat_obs.py: the scripts' flat observation rows -> the texts the LLM reads.

Importing the package (each script does, before torch) also shortens the spin of torch's OpenMP threads: below.
"""

import os

# Between two parallel operations (the update runs on --torch-threads) libgomp's threads spin on their cores before they
# sleep. Beside another busy process (a second run, an LLM server, the env workers of another run) that spinning takes
# the cores the other one needs, and both crawl; a short spin is as fast alone. Read when torch loads; a user's value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
