"""A fine-tuning run's set-up, before anything is compiled: body, tokenizer, labels, length.

``prepare(config, workdir, open_split)`` fills in what a researcher should not have to type:
  - the model's architecture from ``init_from`` (a native checkpoint's saved config, or a
    Hugging Face config.json), keeping the task's head and the run's dtype/remat/scan choices;
  - the pretrained tokenizer (a fine-tune never trains a new one);
  - the label set from the training data (saved as WORKDIR/labels.json, so ids stay fixed on
    resume and at predict time), checked against the eval data, and ``model.num_labels``;
  - ``train.steps`` from ``train.epochs`` when ``train.steps`` is 0 (an explicit step count
    wins), ``train.warmup_steps`` from ``train.warmup_ratio``,
    and ``train.learning_rate`` = 0 made a rate that suits the body's width.
"""

from __future__ import annotations

import json
import math

from absl import logging

from lm_research import hosts, paths, pretrained
from lm_research.tasks.registry import Task, task_of

# ModelConfig fields the run decides; every other one comes from the pretrained body.
RUN_FIELDS = ("head", "num_labels", "pooling", "dtype", "param_dtype", "remat", "scan_layers",
              "attention_impl", "dropout_impl", "dropout_rate", "matmul_precision")
# The bundled-corpus pretraining config of each family (named when init_from is missing).
TINY_BODIES = {"encoder": "bert_tiny", "decoder": "gpt_tiny", "encoder_decoder": "t5_tiny"}


def _body(config, workdir: str) -> pretrained.Body:
  """The run's pretrained body: its own checkpoint when the workdir has one (a resume, eval or
  predict still works when init_from has moved), else init_from's."""
  if workdir and pretrained.has_checkpoint(workdir):
    return pretrained.resolve(workdir)
  path = config.init_from
  paths.check_filesystem(path)
  if not paths.exists(path):
    tiny = TINY_BODIES[config.model.family]
    raise ValueError(f"init_from={path!r} does not exist; pretrain it first (e.g. `python -m "
                     f"lm_research.main --config=configs/{tiny}.py --workdir={path}`) or point "
                     "--config.init_from at a workdir or a Hugging Face folder")
  return pretrained.resolve(path)


def adopt_pretrained(config, body: pretrained.Body) -> None:
  """Sets config.model (but the run's own fields) and data.tokenizer_path from ``body``."""
  for key, value in body.model.items():
    if key in config.model and key not in RUN_FIELDS:
      config.model[key] = value
  if not config.data.tokenizer_path and config.data.source != "synthetic":
    config.data.tokenizer_path = body.tokenizer_path()


def _labels(config, workdir: str, field: str, open_split) -> list[str]:
  """The run's label names: WORKDIR/labels.json if training made it, else the training data's
  (read by process 0, which writes labels.json for the other processes to read)."""
  path = paths.as_path(workdir) / "labels.json"
  if path.exists():
    return json.loads(path.read_text())["labels"]
  # Opening is collective (sources.open_source): every process opens, before process 0's turn.
  training = open_split("train")
  try:
    evaluation = open_split("eval")
  except ValueError:
    evaluation = None  # no eval data: nothing to check
  return hosts.process_0_first(
      "derive the labels", lambda: _derive_labels(config, path, field, training, evaluation))


def _derive_labels(config, path, field: str, training, evaluation) -> list[str]:
  """The training data's labels, checked against the eval data's, written to ``path`` (or read
  from it, on the processes after process 0)."""
  from lm_research.data import formats, sources  # noqa: PLC0415  (TFDS only when needed)
  if path.exists():
    return json.loads(path.read_text())["labels"]
  labels = sources.label_vocab(training, field)
  policy = config.data.unseen_eval_labels
  if policy not in ("error", "count_wrong") or (policy == "count_wrong" and field == "label"):
    raise ValueError(f"data.unseen_eval_labels={policy!r}: use 'error', or 'count_wrong' for "
                     "tagging")
  if evaluation is not None:
    eval_labels = sources.label_vocab(evaluation, field)
    unseen = sorted(set(eval_labels) - set(labels))
    if policy == "error" or not unseen:
      formats.check_labels(labels, eval_labels, "label" if field == "label" else "tag")
    else:
      logging.warning("%d eval tags never seen in training are scored as errors: %s",
                      len(unseen), ", ".join(unseen))
  if len(labels) < 2 and field == "label":
    raise ValueError(f"the training data has a single label ({labels[0]!r}); a classifier needs "
                     "examples of at least two")
  # Written whole: another process may read it next.
  paths.write_text(path, json.dumps({"field": field, "labels": labels}, indent=1))
  logging.info("%d %ss: %s", len(labels), field, ", ".join(labels[:20]))
  return labels


# train.learning_rate = 0 (the fine-tuning configs' default): this rate at d_model 128, scaled
# by 128 / d_model
# (wider bodies take smaller steps, as muP prescribes for hidden weights): 3e-4 for the tiny
# models, 5e-5 for BERT-base, the BERT paper's fine-tuning rate.
AUTO_LR_AT_128 = 3e-4


def _schedule(config, open_split, task: Task | None) -> None:
  """train.steps from train.epochs (unless train.steps is set), warmup from
  train.warmup_ratio, an automatic rate."""
  train = config.train
  if train.learning_rate == 0:
    train.learning_rate = AUTO_LR_AT_128 * 128 / config.model.d_model
    logging.info("train.learning_rate=0: %.3g for d_model=%d", train.learning_rate,
                 config.model.d_model)
  if train.epochs > 0 and train.steps > 0:  # an explicit step count wins
    logging.warning("train.steps=%d is set, so train.epochs=%g is not used (set "
                    "--config.train.steps=0 to train by epochs).", train.steps, train.epochs)
  elif train.epochs > 0:
    examples = len(open_split("train"))
    unit = task.unit if task is not None else "documents"
    train.steps = max(1, math.ceil(train.epochs * examples / train.batch_size))
    rows = (", each one or more rows of train.seq_len (data.truncation=windows)"
            if config.data.truncation == "windows" else "")
    logging.info("train.epochs=%g over %d training %s%s at batch %d: train.steps=%d",
                 train.epochs, examples, unit, rows, train.batch_size, train.steps)
  elif train.steps <= 0:
    raise ValueError(f"train.steps={train.steps}: set --config.train.steps to a positive count, "
                     "or --config.train.epochs to train by passes over the data")
  if train.warmup_ratio > 0:
    train.warmup_steps = int(train.warmup_ratio * train.steps)


def prepare(config, workdir: str, open_split) -> list[str] | None:
  """Resolves a fine-tuning config in place (see the module docstring); returns the labels.

  ``open_split(split)`` gives the run's data sources (data/inputs.DataSources), opened once.
  """
  task = task_of(config)
  if task is not None and task.head is not None:
    config.model.head = task.head
  if config.init_from:
    adopt_pretrained(config, _body(config, workdir))
  elif task is not None:
    logging.warning("init_from is empty: fine-tuning a randomly initialised model.")
  labels = None
  if task is not None and task.labelled:
    labels = _labels(config, workdir, task.label_field, open_split)
    config.model.num_labels = len(labels)
  _schedule(config, open_split, task)
  return labels
