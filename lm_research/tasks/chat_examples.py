"""Chat SFT: conversations -> causal-LM rows with the loss on assistant tokens; replies generated.

  rows        the conversation's ids (tasks/chat_format.py) cut to train.seq_len + 1; the loss
              mask is 1 on every assistant turn's reply and end-of-turn token, 0 elsewhere
  evaluation  eval/loss on those tokens, and with eval.max_new_tokens the reply generated to
              each eval conversation's last assistant turn, scored as seq2seq generations
  replies     a prompt per conversation (its end kept when too long), decoded in fixed-shape
              batches until a stop id (end of turn, EOS, generation_config.json's eos ids)
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import numpy as np
from absl import logging

from lm_research.data import chat_template
from lm_research.task_metrics import generation as gen_metrics
from lm_research.tasks import chat_format, evaluate as task_eval, generate
from lm_research.tasks.examples import _pad


@functools.lru_cache(maxsize=4)
def _format(tokenizer, tokenizer_path: str) -> chat_format.ChatFormat:
  return chat_format.chat_format(tokenizer, tokenizer_path)


def exp_format(exp) -> chat_format.ChatFormat:
  """The run's chat format (its tokenizer folder's template, else the default), built once."""
  return _format(exp.tokenizer, exp.config.data.tokenizer_path)


class ChatExamples:
  """A conversation record -> one causal-LM row; the loss covers the assistant's turns only."""

  def __init__(self, fmt: chat_format.ChatFormat, seq_len: int):
    self.fmt, self.seq_len = fmt, seq_len
    self._warned = False  # one warning per run for conversations cut before any reply

  def __call__(self, record: Mapping, index: int) -> list[dict[str, np.ndarray]]:
    messages = chat_template.parse_messages(record["messages"], f"conversation {index}")
    ids, spans = self.fmt.encode_with_spans(messages)
    trained = np.zeros(len(ids), np.float32)
    for start, end in spans:
      trained[start:end] = 1.0
    ids = ids[:self.seq_len + 1]  # a long conversation keeps its beginning
    if not trained[1:len(ids)].any() and not self._warned:
      self._warned = True
      logging.warning("conversation %d reaches its first assistant reply only after "
                      "train.seq_len=%d tokens, so it trains nothing (others may too); raise "
                      "train.seq_len", index, self.seq_len)
    inputs, targets, n = ids[:-1], ids[1:], len(ids) - 1
    return [{"input_ids": _pad(inputs, self.seq_len, self.fmt.tok.pad_id),
             "targets": _pad(targets, self.seq_len),
             "segment_ids": _pad([1] * n, self.seq_len),
             "positions": _pad(range(n), self.seq_len),
             "loss_mask": _pad(trained[1:n + 1], self.seq_len).astype(np.float32),
             "index": np.int32(index)}]


def last_turn(messages: list[dict]) -> tuple[list[dict], str]:
  """(the messages before the last assistant turn, that turn's text): what eval generates."""
  last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
  return messages[:last], messages[last]["content"]


def prompt_rows(fmt: chat_format.ChatFormat, conversations: list[list[dict]],
                length: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
  """Right-padded reply prompts (ids, mask) [N, length] and whether each was cut (its start
  dropped: the end of a conversation is what the reply follows)."""
  ids = np.full((len(conversations), length), fmt.tok.pad_id, np.int32)
  mask = np.zeros((len(conversations), length), np.int32)
  cut = []
  for i, messages in enumerate(conversations):
    row = fmt.reply_prompt(messages)
    cut.append(len(row) > length)
    row = row[-length:]
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask, cut


def generate_replies(exp, graphdef, params, conversations: list[list[dict]], *, batch_size: int,
                     max_new_tokens: int, seed: int = 0,
                     **options) -> tuple[list[str], list[bool]]:
  """(the assistant's reply to each conversation, whether its prompt was cut)."""
  fmt = exp_format(exp)
  length = generate.prompt_length(exp, max_new_tokens)
  ids, mask, cut = prompt_rows(fmt, conversations, length)
  out = generate.generate_ids(exp, graphdef, params, ids, mask, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, seed=seed, eos_ids=fmt.stop_ids,
                              **options)
  return [fmt.reply_text(tokens) for tokens in out], cut


def chat_metrics(exp, graphdef, params, batches, loss_metrics, step) -> dict[str, float]:
  """Loss on the assistant tokens and, with eval.max_new_tokens, the last assistant turn of
  every eval conversation generated greedily and scored (exact match, BLEU, ROUGE-L)."""
  del step
  metrics = loss_metrics(task_eval.synchronised(batches, exp.config.eval.steps))
  if not exp.config.eval.max_new_tokens:
    return metrics
  if jax.process_count() > 1:
    logging.warning("Generation metrics run on one process only; skipped in this %d-process "
                    "run (eval/loss is still reported).", jax.process_count())
    return metrics
  source = exp.open_split("eval")
  count = len(source)
  if exp.config.eval.steps:
    count = min(count, exp.config.eval.steps * exp.config.train.batch_size)
  turns = [last_turn(chat_template.parse_messages(source[i]["messages"], f"eval conversation {i}"))
           for i in range(count)]
  replies, _ = generate_replies(exp, graphdef, params, [t[0] for t in turns],
                                batch_size=exp.config.train.batch_size,
                                max_new_tokens=exp.config.eval.max_new_tokens)
  metrics.update(gen_metrics.generation_scores(replies, [t[1] for t in turns]))
  return metrics
