"""Ground the embedded LLM in BabyAI: fine-tune it on the expert bot's choices and write a GGUF the advisers load.

    python tools/ground_llm.py --output ~/models/smollm2-grounded.gguf
    python tools/advice_eval.py --llm-model-path ~/models/smollm2-grounded.gguf
    python ppo_llm_policy.py --env-id BabyAI-UnlockLocal-v0 --llm-model-path ~/models/smollm2-grounded.gguf

1. Examples: bot-led rollouts on the training levels, with random actions mixed in (as tools/advice_eval.py does, on
   other seeds). Each state gives an action example (observation text -> the bot's action) and, where at least two
   candidate subgoals are visible and one is on the bot's plan, a subgoal example (the candidates in a random cyclic
   order -> the number of the bot's next one). Both are tokenized by llama.cpp exactly as the advisers send them.
2. The model: the GGUF's tensors, dequantized by the `gguf` package, in a small torch Llama (llama.cpp's `llama`
   architecture: RMSNorm, rotary embedding on adjacent pairs, grouped-query attention, SwiGLU). The lower blocks stay
   frozen, so their output is computed once per example (the shared instructions once per batch); the top
   --train-blocks blocks are trained with AdamW (matrix products in bfloat16) on the answer tokens' negative
   log-likelihood over the whole vocabulary (the written file's log-probs rise, not only their ranking). --init random trains every weight of the same architecture from a random start: the control for
   "does language pre-training matter?".
3. The output: a GGUF with the input's metadata and tokenizer, the trained tensors in F16 (or F32) and every other
   tensor copied byte for byte (re-quantizing the trained ones to 4 bits would round their changes away). llama.cpp
   then loads it, and the tool reports its log-probs on training examples next to torch's.
"""

import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llmppo.ctrl_c  # noqa: E402,F401  (a Ctrl-C while loading exits quietly)
import prompts  # noqa: E402
from llmppo.checks import float_flag_error  # noqa: E402

TRAIN_ENV_IDS = ("BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-OpenDoor-v0", "BabyAI-GoToObjDoor-v0")


@dataclass
class Args:
    output: str
    """where to write the fine-tuned GGUF (a new file outside this repository)"""
    llm_model_path: str | None = None
    """GGUF model to start from (default: the embedded SmolLM2-135M-Instruct)"""
    env_ids: tuple[str, ...] = TRAIN_ENV_IDS
    """BabyAI training levels (the expert bot must solve them)"""
    num_examples: int = 2000
    """training examples in all, spread evenly over the levels, half action and half subgoal examples"""
    subgoal_share: float = 0.5
    """share of subgoal-ranking examples (the rest are action examples)"""
    random_action_prob: float = 0.2
    """probability of a random action instead of the bot's during the rollouts (state diversity)"""
    seed: int = 100
    """seed of the rollouts (tools/advice_eval.py evaluates on seed 1's episodes), the shuffling and --init random"""
    init: Literal["pretrained", "random"] = "pretrained"
    """start from the GGUF's weights, or from random weights of the same shape (the control)"""
    train_blocks: int = 10
    """the top blocks to train (--init random trains every weight)"""
    epochs: int = 2
    """passes over the examples"""
    batch_size: int = 16
    """examples per gradient step"""
    learning_rate: float = 2e-4
    """AdamW learning rate (linear warm-up over the first tenth, then cosine decay)"""
    precision: Literal["bf16", "f32"] = "bf16"
    """training's matrix products in bfloat16 (weights and optimizer in float32) or in float32"""
    output_type: Literal["f16", "f32"] = "f16"
    """tensor type of the trained tensors in the written GGUF"""
    threads: int = 0
    """torch and llama.cpp threads (0: all cores)"""
    check_examples: int = 32
    """training examples whose answers llama.cpp scores on the written file, against torch (0: no check)"""


# ---- the model: llama.cpp's llama architecture in torch, weights from the GGUF -------------------------------------
def read_gguf(path):
    """(hyper-parameters, {tensor name: float32 numpy array in torch Linear's (out, in) shape}, reader)."""
    import gguf

    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()
    hparams = dict(n_blocks=field("llama.block_count"), width=field("llama.embedding_length"),
                   n_heads=field("llama.attention.head_count"), n_kv_heads=field("llama.attention.head_count_kv"),
                   rope_base=float(field("llama.rope.freq_base")) if "llama.rope.freq_base" in reader.fields else 1e4,
                   eps=float(field("llama.attention.layer_norm_rms_epsilon")))
    weights = {tensor.name: gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
               for tensor in reader.tensors}
    return hparams, weights, reader


class TorchLlama:
    """Forward pass of a llama-architecture GGUF, its weights as torch tensors by their GGUF names."""

    def __init__(self, hparams, weights, trainable_from: int):
        import torch

        self.torch, self.hparams = torch, hparams
        self.params = {name: torch.from_numpy(array) for name, array in weights.items()}
        self.tied = "output.weight" not in self.params  # SmolLM2 reuses its token embedding as the output layer
        self.trainable_from = trainable_from
        self.trainable = [name for name in self.params if name.startswith("blk.")
                          and int(name.split(".")[1]) >= trainable_from]
        if trainable_from == 0:  # every weight (the random-init control)
            self.trainable = list(self.params)
        for name in self.trainable:
            self.params[name].requires_grad_(True)
        head_dim = hparams["width"] // hparams["n_heads"]
        self.inv_freq = 1.0 / hparams["rope_base"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)

    def rms_norm(self, x, weight):
        return x * self.torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.hparams["eps"]) * weight

    def rope(self, x, cos, sin):
        """llama.cpp's normal rope: each adjacent pair (2i, 2i+1) of a head is rotated by position x frequency i."""
        pairs = x.unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        return self.torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)

    def block(self, i, x, positions, prefix_kv=None):
        """Block i on x (batch, length, width) at `positions`; with prefix_kv, x continues a prefix (its keys and
        values, batch 1) that every row shares. Returns the new x and this block's keys and values."""
        F, p, h = self.torch.nn.functional, self.params, self.hparams
        batch, length, _ = x.shape
        cos, sin = self.rotations(positions)
        normed = self.rms_norm(x, p[f"blk.{i}.attn_norm.weight"])
        heads = lambda name, n: (normed @ p[f"blk.{i}.{name}.weight"].T).view(batch, length, n, -1).transpose(1, 2)
        q = self.rope(heads("attn_q", h["n_heads"]), cos, sin)
        k = self.rope(heads("attn_k", h["n_kv_heads"]), cos, sin)
        v = heads("attn_v", h["n_kv_heads"])
        if prefix_kv is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # every row sees the whole prefix, then its own tokens causally
            n_prefix = prefix_kv[0].shape[2]
            keys = self.torch.cat([prefix_kv[0].expand(batch, -1, -1, -1), k], dim=2)
            values = self.torch.cat([prefix_kv[1].expand(batch, -1, -1, -1), v], dim=2)
            allowed = self.torch.ones(length, n_prefix + length, dtype=self.torch.bool).tril(n_prefix)
            attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=True)
        x = x + attended.transpose(1, 2).reshape(batch, length, -1) @ p[f"blk.{i}.attn_output.weight"].T
        normed = self.rms_norm(x, p[f"blk.{i}.ffn_norm.weight"])
        gate, up = normed @ p[f"blk.{i}.ffn_gate.weight"].T, normed @ p[f"blk.{i}.ffn_up.weight"].T
        return x + (F.silu(gate) * up) @ p[f"blk.{i}.ffn_down.weight"].T, (k, v)

    def rotations(self, positions):
        angles = positions.double()[:, None] * self.inv_freq[None, :]
        return self.torch.cos(angles).float(), self.torch.sin(angles).float()

    def embed(self, tokens):
        return self.params["token_embd.weight"][tokens]

    def hidden(self, x, first_block=0, last_block=None, prefix=None):
        """Hidden states after blocks first_block .. last_block - 1 from x, the states before first_block (batch,
        length, width). With prefix (its states before first_block, batch 1), x's rows continue that shared prefix,
        which is computed once: returns (prefix's states, x's states)."""
        torch = self.torch
        n_prefix = 0 if prefix is None else prefix.shape[1]
        positions = torch.arange(n_prefix, n_prefix + x.shape[1])
        for i in range(first_block, self.hparams["n_blocks"] if last_block is None else last_block):
            prefix_kv = None
            if prefix is not None:
                prefix, prefix_kv = self.block(i, prefix, torch.arange(n_prefix))
            x, _ = self.block(i, x, positions, prefix_kv)
        return x if prefix is None else (prefix, x)

    def log_probs(self, x):
        """Next-token log-probs from the last block's hidden states."""
        head = self.params["token_embd.weight" if self.tied else "output.weight"]
        logits = self.rms_norm(x, self.params["output_norm.weight"]) @ head.T
        return self.torch.log_softmax(logits.float(), dim=-1)


# ---- examples: the bot's choices, in exactly the prompts the advisers send -----------------------------------------
@dataclass
class Example:
    tokens: list[int]  # the prompt, then the answer's tokens but its last (teacher forcing)
    answer: list[int]  # the answer's tokens, predicted from position len(tokens) - len(answer) on
    choices: list[list[int]]  # every allowed answer's tokens (the right one at index `right`)
    right: int
    kind: str  # "action" or "subgoal"
    env_id: str


def answer_example(prompt_tokens, choices, right, kind, env_id):
    answer = choices[right]
    return Example(prompt_tokens + answer[:-1], answer, choices, right, kind, env_id)


def collect_examples(args: Args, model_path: str) -> list[Example]:
    """Action and subgoal examples from bot-led rollouts on each training level, tokenized by llama.cpp through the
    advisers' own backend (so the prompt, the chat template and the answer tokens are the ones they score)."""
    from advice_eval import collect_states, collect_subgoal_states
    from llmppo.advisers import make_adviser

    rng, examples = np.random.default_rng(args.seed), []
    per_level = args.num_examples / len(args.env_ids)
    for level, env_id in enumerate(args.env_ids):
        n_subgoal = round(per_level * (level + 1) * args.subgoal_share) - round(per_level * level * args.subgoal_share)
        n_action = round(per_level * (level + 1)) - round(per_level * level) - n_subgoal
        actions = prompts.allowed_actions(env_id)
        adviser = make_adviser("llm", actions=actions, cache_dir=None, model_path=model_path,
                               n_threads=args.threads or None)
        backend = adviser.backend
        texts, expert_actions = collect_states(env_id, n_action, args.random_action_prob, args.seed) if n_action else ([], [])
        for text, expert_action in zip(texts, expert_actions):
            if expert_action not in actions:  # the bot's answer must be a word the adviser offers
                continue
            examples.append(answer_example(backend.tokenize_prompt(text), list(backend.answer_tokens.values()),
                                           actions.index(int(expert_action)), "action", env_id))
        states = collect_subgoal_states(env_id, n_subgoal, args.random_action_prob, args.seed) if n_subgoal else []
        shared = backend.shared_number_tokens
        for text, candidates, planned, *_ in states:
            shift = int(rng.integers(len(candidates)))  # a random order: the answer's position tells nothing
            shown = candidates[shift:] + candidates[:shift]
            prompt_tokens = backend.llm.tokenize(adviser.subgoal_text(prompts.subgoal_query(text, shown)).encode(),
                                                 add_bos=True, special=True) + shared
            numbers = [tokens[len(shared):] for tokens in backend.number_tokens[:len(shown)]]
            examples.append(answer_example(prompt_tokens, numbers, shown.index(planned), "subgoal", env_id))
        adviser.close()
        kinds = [example.kind for example in examples if example.env_id == env_id]
        print(f"examples: {env_id}: {kinds.count('action')} action, {kinds.count('subgoal')} subgoal", flush=True)
    return examples


# ---- training ------------------------------------------------------------------------------------------------------
def padded(sequences, pad=0):
    import torch

    length = max(len(sequence) for sequence in sequences)
    return torch.tensor([list(sequence) + [pad] * (length - len(sequence)) for sequence in sequences])


def prefix_groups(examples) -> list[tuple[list[int], list[int]]]:
    """(shared prefix tokens, example indices) per prompt kind: the action prompts of one set of allowed actions, or
    the subgoal prompts. The prefix (the instructions) is computed once per batch, not once per example."""
    by_kind = {}
    for i, example in enumerate(examples):
        by_kind.setdefault((example.kind, tuple(map(tuple, example.choices)) if example.kind == "action" else ()),
                           []).append(i)
    groups = []
    for rows in by_kind.values():
        prefix = examples[rows[0]].tokens
        for i in rows:  # the common prefix, ending before every example's first answer position
            tokens, n_common = examples[i].tokens, 0
            limit = min(len(prefix), len(tokens) - len(examples[i].answer))
            while n_common < limit and tokens[n_common] == prefix[n_common]:
                n_common += 1
            prefix = prefix[:n_common]
        groups.append((list(prefix), rows))
    return groups


def group_batches(groups, batch_size, rng=None):
    """(group index, example indices) batches, each from one group; shuffled when `rng` is given."""
    batches = []
    for g, (_, rows) in enumerate(groups):
        rows = list(rng.permutation(rows)) if rng is not None else rows
        batches += [(g, rows[start:start + batch_size]) for start in range(0, len(rows), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if rng is not None else batches


def frozen_states(model, examples, groups, batch_size=32):
    """The hidden states entering the first trained block (the frozen blocks run once, without gradients): per group
    its prefix's, per example its own tokens'."""
    import torch

    prefix_states, states = [None] * len(groups), [None] * len(examples)
    with torch.no_grad():
        for g, (prefix, rows) in enumerate(groups):
            rows = sorted(rows, key=lambda i: len(examples[i].tokens))  # similar lengths: little padding
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                x = model.embed(padded([examples[i].tokens[len(prefix):] for i in batch]))
                prefix_states[g], x = model.hidden(x, 0, model.trainable_from, prefix=model.embed(padded([prefix])))
                for row, i in enumerate(batch):
                    states[i] = x[row, :len(examples[i].tokens) - len(prefix)].clone()
    return prefix_states, states


def batch_answer_log_probs(model, examples, prefix, states=None, prefix_state=None):
    """(sum of each example's answer-token log-probs, whether its right answer's first token beats the other choices')
    for examples that share `prefix`; `states`, `prefix_state`: the frozen blocks' outputs (None: from the tokens)."""
    import torch

    suffixes = [example.tokens[len(prefix):] for example in examples]
    if states is None:
        x, first_block, prefix_x = model.embed(padded(suffixes)), 0, model.embed(padded([prefix]))
    else:
        x = torch.zeros(len(examples), max(map(len, suffixes)), states[0].shape[-1])
        for row, state in enumerate(states):
            x[row, :len(state)] = state
        first_block, prefix_x = model.trainable_from, prefix_state
    _, x = model.hidden(x, first_block, prefix=prefix_x)
    rows, positions, targets = [], [], []
    for row, example in enumerate(examples):
        first = len(example.tokens) - len(example.answer) - len(prefix)  # its next token is the answer's first
        rows += [row] * len(example.answer)
        positions += range(first, first + len(example.answer))
        targets += example.answer
    log_probs = model.log_probs(x[rows, positions])  # only the answer positions meet the vocabulary-sized output
    token_log_probs = log_probs[torch.arange(len(targets)), targets]
    sums = torch.zeros(len(examples)).index_add(0, torch.tensor(rows), token_log_probs)
    firsts = np.cumsum([0] + [len(example.answer) for example in examples])[:-1]
    right = [bool(log_probs[first, example.choices[example.right][0]]
                  >= max(log_probs[first, choice[0]] for choice in example.choices))
             for first, example in zip(firsts, examples)]
    return sums, right


def answer_log_probs(model, examples, batch_size=16):
    """Each example's answer log-likelihood (float32 torch, no gradients), in the examples' order."""
    import torch

    groups, scores = prefix_groups(examples), np.zeros(len(examples))
    with torch.no_grad():
        for g, rows in group_batches(groups, batch_size):
            scores[rows] = batch_answer_log_probs(model, [examples[i] for i in rows], groups[g][0])[0].numpy()
    return scores


def learning_rate_at(step, total_steps, peak):
    warmup = max(1, total_steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


def train(model, examples, args: Args, stop):
    """AdamW on the answer tokens' negative log-likelihood; a progress line every few steps. Returns the steps done."""
    import torch

    groups = prefix_groups(examples)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with autocast:
        prefix_states, states = frozen_states(model, examples, groups) if model.trainable_from > 0 else (None, None)
    optimizer = torch.optim.AdamW([model.params[name] for name in model.trainable], lr=args.learning_rate,
                                  weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    total_steps = args.epochs * len(group_batches(groups, args.batch_size))
    step, start, recent_loss, recent_right = 0, time.perf_counter(), [], []
    for epoch in range(args.epochs):
        for g, rows in group_batches(groups, args.batch_size, rng):
            if stop():
                return step
            with autocast:
                sums, right = batch_answer_log_probs(
                    model, [examples[i] for i in rows], groups[g][0], None if states is None else [states[i] for i in rows],
                    None if prefix_states is None else prefix_states[g])
            loss = -sums.mean()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, args.learning_rate)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([model.params[name] for name in model.trainable], 1.0)
            optimizer.step()
            step += 1
            recent_loss, recent_right = (recent_loss + [loss.item()])[-20:], (recent_right + right)[-20 * len(rows):]
            if step % 10 == 0 or step == total_steps:
                elapsed = time.perf_counter() - start
                print(f"step {step}/{total_steps} (epoch {epoch + 1}) loss {np.mean(recent_loss):.3f} "
                      f"right {np.mean(recent_right):.0%} (last 20 steps) {elapsed:.0f} s, "
                      f"{elapsed / step * (total_steps - step):.0f} s left", flush=True)
    return step


def random_weights(weights, seed):
    """Weights of the same shapes, drawn as a freshly initialised Llama's (normal 0.02, norms at 1)."""
    rng = np.random.default_rng(seed)
    return {name: (np.ones_like(array) if name.endswith("norm.weight")
                   else rng.normal(0, 0.02, array.shape).astype(np.float32)) for name, array in weights.items()}


# ---- the GGUF that llama.cpp loads ---------------------------------------------------------------------------------
def write_gguf(reader, model, path, output_type, note):
    """The input's metadata and tokenizer, the trained tensors as `output_type`, the others copied byte for byte;
    written beside `path` and moved into place, so a failure leaves no partial file."""
    import gguf

    quant_type = gguf.GGMLQuantizationType.F16 if output_type == "f16" else gguf.GGMLQuantizationType.F32
    numpy_type = np.float16 if output_type == "f16" else np.float32
    trained = {name: model.params[name].detach().numpy() for name in model.trainable}
    trained = {name: array.astype(numpy_type if array.ndim > 1 else np.float32) for name, array in trained.items()}
    tensor_type_f32 = gguf.GGMLQuantizationType.F32  # norms stay F32, as llama.cpp expects
    os.makedirs(os.path.dirname(path), exist_ok=True)  # checked before training: it can be made
    partial = path + ".partial"
    writer = gguf.GGUFWriter(partial, arch=reader.fields["general.architecture"].contents())
    # First after the architecture: it lies in the first MB, which the advisers' cache keys hash.
    writer.add_string("minigrid_llm_ppo.grounding", note)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    data = []
    for tensor in reader.tensors:
        array = trained.get(tensor.name, tensor.data)
        kind = tensor.tensor_type if tensor.name not in trained else quant_type if array.ndim > 1 else tensor_type_f32
        writer.add_tensor_info(tensor.name, array.shape, array.dtype, array.nbytes, kind)
        data.append(array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in data:
            writer.write_tensor_data(array)
        writer.close()
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def llama_cpp_answer_log_probs(model_path, examples, threads):
    """llama.cpp's log-likelihood of each example's answer (the advisers' own scoring path)."""
    from llmppo.advisers import make_adviser

    adviser = make_adviser("llm", cache_dir=None, model_path=model_path, n_threads=threads or None)
    scores = []
    for example in examples:
        prompt = example.tokens[:len(example.tokens) - len(example.answer) + 1]
        scores.append(adviser.backend._log_likelihoods(prompt, [example.answer])[0])
    adviser.close()
    return np.array(scores)


# ---- the run -------------------------------------------------------------------------------------------------------
def check_args(args: Args) -> str | None:
    """The first problem with the flags, as one line, or None (checked before any work)."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the BabyAI levels)

    from llmppo.llama import gguf_load_error, resolve_model_path
    from llmppo.runs import writable_folder_error

    for env_id in args.env_ids:
        if not env_id.startswith("BabyAI-") or env_id not in gym.registry:
            return f"--env-ids {env_id} is not a registered BabyAI level (the expert bot solves BabyAI levels only)"
    if not args.env_ids:
        return "--env-ids needs at least one BabyAI level"
    for flag, value, least in (("--num-examples", args.num_examples, len(args.env_ids)), ("--epochs", args.epochs, 1),
                               ("--batch-size", args.batch_size, 1), ("--train-blocks", args.train_blocks, 1),
                               ("--threads", args.threads, 0), ("--check-examples", args.check_examples, 0)):
        if value < least:
            return f"{flag} must be at least {least}, got {value}"
    if not 0 <= args.subgoal_share <= 1:
        return f"--subgoal-share must be in [0, 1], got {args.subgoal_share}"
    output = os.path.abspath(os.path.expanduser(args.output))
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if output == repository or output.startswith(repository + os.sep):
        return f"--output {args.output} is inside this repository; write the model elsewhere (e.g. ~/models/)"
    if os.path.exists(output):
        return f"--output {args.output} already exists; pass a new file name (nothing is overwritten)"
    if (message := writable_folder_error(os.path.dirname(output), "--output's folder")):
        return message
    try:
        model_path = resolve_model_path(args.llm_model_path)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return float_flag_error(args) or gguf_load_error(model_path) or architecture_error(model_path, args.train_blocks)


def architecture_error(path, train_blocks):
    """Why this tool cannot fine-tune the GGUF at `path` (not a llama-architecture model, too few blocks), or None."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    if arch != "llama":
        return (f"--llm-model-path {path} has architecture {arch!r}; this tool fine-tunes llama-architecture models "
                f"(SmolLM2, Llama-2) only")
    n_blocks = fields["llama.block_count"].contents()
    if train_blocks > n_blocks:
        return f"--train-blocks {train_blocks} is more than the model's {n_blocks} blocks"
    return None


class Stop:
    """Set by Ctrl-C once training has started: the tool then writes what it has trained."""

    def __init__(self):
        self.requested = False

    def __call__(self):
        return self.requested

    def request(self, signum=None, frame=None):
        print("\ninterrupted: writing what has been trained so far", flush=True)
        self.requested = True


def main(args: Args) -> dict:
    import signal

    import torch

    from llmppo.llama import resolve_model_path

    if (message := check_args(args)):
        raise ValueError(message)
    start, threads = time.perf_counter(), args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    model_path, output = resolve_model_path(args.llm_model_path), os.path.abspath(os.path.expanduser(args.output))
    stop = Stop()
    examples = collect_examples(args, model_path)
    if not examples:
        raise ValueError("no training examples were collected: nothing written")
    hparams, weights, reader = read_gguf(model_path)
    pretrained = TorchLlama(hparams, weights, 0)  # torch's scores of the start, for the comparison at the end
    if args.init == "random":
        weights = random_weights(weights, args.seed)
    model = TorchLlama(hparams, weights, 0 if args.init == "random" else hparams["n_blocks"] - args.train_blocks)
    check = [examples[i] for i in np.random.default_rng(args.seed).permutation(len(examples))[:args.check_examples]]
    with torch.no_grad():
        before = answer_log_probs(pretrained, check) if check else np.zeros(0)
    del pretrained
    n_action = sum(example.kind == "action" for example in examples)
    print(f"training {len(model.trainable)} tensors ({sum(model.params[n].numel() for n in model.trainable):,} "
          f"weights) on {len(examples)} examples ({n_action} action, {len(examples) - n_action} subgoal), "
          f"{threads} threads", flush=True)
    signal.signal(signal.SIGINT, stop.request)  # from now on a Ctrl-C (or SIGTERM) writes what has been trained
    signal.signal(signal.SIGTERM, stop.request)
    train_start = time.perf_counter()
    steps = train(model, examples, args, stop)
    train_seconds = time.perf_counter() - train_start
    if steps == 0:
        print("interrupted before the first step: nothing written", file=sys.stderr, flush=True)
        sys.exit(130)
    trained = "every weight" if args.init == "random" else f"the top {args.train_blocks} blocks"
    note = (f"fine-tuned by tools/ground_llm.py from {os.path.basename(model_path)} ({args.init} start, {trained}), "
            f"{steps} steps on {len(examples)} examples of {', '.join(args.env_ids)}, seed {args.seed}")
    write_gguf(reader, model, output, args.output_type, note)
    result = dict(examples=len(examples), steps=steps, train_seconds=train_seconds, output=output)
    if check:
        after = answer_log_probs(model, check)
        served = llama_cpp_answer_log_probs(output, check, args.threads)
        result |= dict(checked=check, torch_before=before, torch_after=after, llama_cpp_after=served)
        print(f"answer log-prob on {len(check)} training examples: torch {before.mean():.3f} before, "
              f"{after.mean():.3f} after; llama.cpp on the written file {served.mean():.3f} "
              f"(largest difference from torch {np.abs(served - after).max():.3f} nats)")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"wrote {output} ({os.path.getsize(output) / 2**20:.0f} MB): {steps} steps, training {train_seconds:.0f} s, "
          f"all {time.perf_counter() - start:.0f} s, peak memory {peak_gb:.1f} GB", flush=True)
    if stop():
        sys.exit(130)  # interrupted: what was trained is written, and the exit code says it was cut short
    return result


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
