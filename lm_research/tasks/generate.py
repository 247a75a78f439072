"""Texts in, generated texts out: prompts encoded for the family, decoded in batches of
similar prompt length, each cut to one of a few bucket widths (the last batch is padded with
empty prompts), so a few compiled decoding functions serve a whole eval set or predict file.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from lm_research import decoding
from lm_research.data import chat_template, length_buckets

# Prompt widths a generation batch is cut to (length_buckets.bucket_lengths), plus the row's.
PROMPT_BUCKETS = 4


def prompt_length(exp, max_new_tokens: int) -> int:
  """Prompt tokens per row: seq_len, and for learned positions what leaves room to generate."""
  cfg, seq_len = exp.model_cfg, exp.config.train.seq_len
  if cfg.family == "decoder" and cfg.position == "learned":
    room = cfg.max_len - max_new_tokens
    if room < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                       f"model.max_len={cfg.max_len}; lower it")
    return min(seq_len, room)
  return seq_len


def encode_prompts(tokenizer, family: str, texts: Sequence[str],
                   length: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded (ids, mask) [N, length]: T5 inputs end in EOS; decoder prompts start with
  BOS and keep their last tokens when too long (the end is what the continuation follows)."""
  ids = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  bos = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
  for i, text in enumerate(texts):
    tokens = tokenizer.encode(text)
    if family == "encoder_decoder":
      row = tokens[:length - 1] + [tokenizer.eos_id]
    else:
      row = ([bos] + tokens)[-length:]
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return ids, mask


def stop_ids(exp) -> tuple[int, ...]:
  """The ids that end a generation: the tokenizer's EOS and every eos_token_id of a Hugging
  Face body's generation_config.json (Llama 3 and Qwen2 instruct models list several)."""
  path = exp.config.data.tokenizer_path
  extra = chat_template.generation_eos_ids(chat_template.tokenizer_folder(path)) if path else []
  return tuple(dict.fromkeys([exp.tokenizer.eos_id, *extra]))


def decode_config(exp, max_new_tokens: int, eos_ids: tuple[int, ...] = (),
                  **options) -> decoding.DecodeConfig:
  """Decoding options with padding and the stop ids (``eos_ids``, else ``stop_ids(exp)``)."""
  return decoding.DecodeConfig(max_new_tokens=max_new_tokens, eos_id=eos_ids or stop_ids(exp),
                               pad_id=exp.tokenizer.pad_id, **options)


def generate_ids(exp, graphdef, params, ids: np.ndarray, mask: np.ndarray, *, batch_size: int,
                 max_new_tokens: int, seed: int = 0, **options) -> list[list[int]]:
  """The generated ids of each right-padded prompt row, without the stop id that ended it.

  Rows go longest prompt first, and each batch's prompts are cut to the shortest of a few
  bucket lengths (data/length_buckets.py) that holds them, so short prompts are not decoded
  at the full row width; each bucket compiles once.
  """
  model = nnx.merge(graphdef, params)
  cfg = decode_config(exp, max_new_tokens, **options)
  prompt_lengths = mask.sum(axis=1)
  buckets = length_buckets.bucket_lengths(prompt_lengths, ids.shape[1], PROMPT_BUCKETS, 8)
  order = np.argsort(-prompt_lengths, kind="stable")
  outputs: list[list[int]] = [[] for _ in range(len(ids))]
  for start in range(0, len(ids), batch_size):
    rows = order[start:start + batch_size]
    n = len(rows)
    width = next(b for b in buckets if b >= prompt_lengths[rows].max())
    batch_ids = np.zeros((batch_size, width), np.int32)
    batch_mask = np.zeros((batch_size, width), np.int32)
    batch_ids[:n], batch_mask[:n] = ids[rows, :width], mask[rows, :width]
    batch_mask[n:, 0] = 1  # padding rows: a one-token prompt, so every row is well defined
    out = decoding.generate(model, batch_ids, batch_mask, cfg,
                            rng=jax.random.fold_in(jax.random.key(seed), start))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i, row_index in enumerate(rows):
      row = tokens[i, :lengths[i]].tolist()
      outputs[row_index] = row[:-1] if row and row[-1] in cfg.eos_ids else row
  return outputs


def generate_texts(exp, graphdef, params, texts: Sequence[str], *, batch_size: int,
                   max_new_tokens: int, seed: int = 0, **options) -> list[str]:
  """The generated continuation (decoder) or output (T5) of each text, as text."""
  length = prompt_length(exp, max_new_tokens)
  ids, mask = encode_prompts(exp.tokenizer, exp.model_cfg.family, texts, length)
  return [exp.tokenizer.decode(out) for out in generate_ids(
      exp, graphdef, params, ids, mask, batch_size=batch_size, max_new_tokens=max_new_tokens,
      seed=seed, **options)]
