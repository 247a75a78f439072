"""The fine-tuning tasks, each one record: head, labels, rows, evaluation and predict format.

  classification   a label per text (or text pair): sequence-classification head
  tagging          a tag per word: token-classification head
  seq2seq          target text from input text: an encoder-decoder's own LM head
  prompt_response  a response after a prompt: a decoder's own LM head, loss on the response
  chat             conversations in the model's chat template: loss on the assistant's turns

The set-up (tasks/setup.py), the experiment (rows, eval) and predict ask the run's Task instead
of comparing objective names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lm_research.tasks import chat_examples
from lm_research.tasks import evaluate as task_eval
from lm_research.tasks import examples as task_examples


@dataclasses.dataclass(frozen=True)
class Task:
  """What one fine-tuning task needs from the set-up, the data, evaluation and predict."""

  name: str
  head: str | None  # the head put on the body; None keeps the body's own LM head
  label_field: str | None  # the record field whose values are the labels (labels.json)
  unit: str  # what a record is, as train.epochs counts them
  # what --mode=predict writes: 'classification', 'tagging', 'generation' or 'chat'
  prediction: str
  rows: Callable  # (exp) -> the row builder, (record, index) -> [row, ...] (tasks/examples.py)
  # (exp, graphdef, params, eval batches, loss_metrics(batches) -> dict, step) -> eval metrics
  metrics: Callable

  @property
  def labelled(self) -> bool:
    """Whether the task predicts from a fixed label set (classification, tagging)."""
    return self.label_field is not None


def _label_ids(exp) -> dict[str, int]:
  return {name: i for i, name in enumerate(exp.labels or [])}


def _generation_task_metrics(exp, graphdef, params, batches, loss_metrics, step):
  """Target loss over the eval set and, with eval.max_new_tokens, scored greedy generations."""
  del step
  metrics = loss_metrics(task_eval.synchronised(batches, exp.config.eval.steps))
  if exp.config.eval.max_new_tokens:
    metrics.update(task_eval.generation_metrics(exp, graphdef, params, exp.open_split("eval")))
  return metrics


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("classification", head="sequence_classification", label_field="label", unit="texts",
         prediction="classification",
         rows=lambda exp: task_examples.ClassificationExamples(
             exp.tokenizer, exp.model_cfg.family, exp.config.train.seq_len, _label_ids(exp),
             exp.config.data.truncation),
         metrics=lambda exp, graphdef, params, batches, loss_metrics, step:
             task_eval.classification_metrics(exp, graphdef, params, batches, step)),
    Task("tagging", head="token_classification", label_field="tags", unit="sentences",
         prediction="tagging",
         rows=lambda exp: task_examples.TaggingExamples(
             exp.tokenizer, exp.model_cfg.family, exp.config.train.seq_len, _label_ids(exp)),
         metrics=lambda exp, graphdef, params, batches, loss_metrics, step:
             task_eval.tagging_metrics(exp, graphdef, params, batches, step)),
    Task("seq2seq", head=None, label_field=None, unit="pairs", prediction="generation",
         rows=lambda exp: task_examples.Seq2SeqExamples(
             exp.tokenizer, exp.config.train.seq_len, exp.target_len),
         metrics=_generation_task_metrics),
    Task("prompt_response", head=None, label_field=None, unit="pairs", prediction="generation",
         rows=lambda exp: task_examples.PromptResponseExamples(
             exp.tokenizer, exp.config.train.seq_len),
         metrics=_generation_task_metrics),
    Task("chat", head=None, label_field=None, unit="conversations", prediction="chat",
         rows=lambda exp: chat_examples.ChatExamples(
             chat_examples.exp_format(exp), exp.config.train.seq_len),
         metrics=chat_examples.chat_metrics),
)}


def task_of(config) -> Task | None:
  """The run's task: its objective when that is a task's, causal LM on (prompt, response)
  pairs or on conversations, or None for pretraining."""
  if config.objective in TASKS:
    return TASKS[config.objective]
  if config.objective == "causal_lm" and config.data.kind == "seq2seq":
    return TASKS["prompt_response"]
  if config.objective == "causal_lm" and config.data.kind == "chat":
    return TASKS["chat"]
  return None
