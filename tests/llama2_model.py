"""A tiny Llama-2-chat stand-in for the tests: Llama-2's real SentencePiece vocabulary and special tokens (read from
tests/data/ggml-vocab-llama-spm.gguf, see tests/data/README.md), its metadata name, and a two-block Llama network of
small width with fixed random weights, written as a GGUF that llama.cpp loads like a published Llama-2-7B-chat file.
Its answers carry no knowledge, but every answer piece (the action words' tokens, the subgoal numbers and the space
before a digit) is among its most likely next tokens after any prompt, as in a model that follows the instructions, so that
every path reads a real score, top-K lists and chat answers included; the tokenizer and the chat format are real."""

import os

import numpy as np

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ggml-vocab-llama-spm.gguf")
# Meta's Llama-2-chat template as published with meta-llama/Llama-2-7b-chat-hf (tokenizer_config.json).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
# As TheBloke's Llama-2-7B-chat GGUFs name it: the name the built-in [INST] format is chosen by.
MODEL_NAME = "LLaMA v2"
N_EMBD, N_HEAD, N_FF, N_BLOCKS = 64, 4, 128, 2
ANSWER_PIECES = ["▁left", "▁right", "▁forward", "▁pick", "up", "▁drop", "▁toggle", "▁done", "▁", *"123456789"]


def read_vocab():
    """(tokens, scores, token types, special ids) of Llama-2's tokenizer."""
    import gguf

    reader = gguf.GGUFReader(VOCAB_FILE)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    special = {name: int(fields[f"tokenizer.ggml.{name}_token_id"].contents()) for name in ("bos", "eos", "unknown")}
    return tokens, scores, types, special


def write_llama2_gguf(path, chat_template: bool, seed: int = 0):
    """A two-block Llama-architecture GGUF (F32) with Llama-2's tokenizer at `path`; with or without
    tokenizer.chat_template (many published Llama-2-chat GGUFs carry none)."""
    import gguf

    tokens, scores, types, special = read_vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(MODEL_NAME)
    writer.add_context_length(4096)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_BLOCKS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(special["bos"])
    writer.add_eos_token_id(special["eos"])
    writer.add_unk_token_id(special["unknown"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(LLAMA2_CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)
    weight = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    # Every embedding shares a large first coordinate, which the answer pieces' output rows reward: after the final
    # norm it dominates, so those pieces lead the next-token distribution whatever the prompt.
    embeddings = weight(len(tokens), N_EMBD)
    embeddings[:, 0] = 4.0
    writer.add_tensor("token_embd.weight", embeddings)
    for block in range(N_BLOCKS):
        for name, shape in [("attn_q", (N_EMBD, N_EMBD)), ("attn_k", (N_EMBD, N_EMBD)), ("attn_v", (N_EMBD, N_EMBD)),
                            ("attn_output", (N_EMBD, N_EMBD)), ("ffn_gate", (N_FF, N_EMBD)),
                            ("ffn_up", (N_FF, N_EMBD)), ("ffn_down", (N_EMBD, N_FF))]:
            writer.add_tensor(f"blk.{block}.{name}.weight", weight(*shape))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{block}.{name}.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = weight(len(tokens), N_EMBD)
    answer_rows = [tokens.index(piece) for piece in ANSWER_PIECES]
    output[answer_rows, 0] = 3.0 + rng.random(len(answer_rows))  # unequal, so that rankings are not ties
    output[tokens.index("▁"), 0] = 4.5  # first, as in Llama-2 after "Subgoal:", where " 2" is "▁" then "2"
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
