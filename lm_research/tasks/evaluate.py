"""Fine-tuning evaluation: one pass over the eval set, predictions gathered, task metrics.

  classification  eval/loss, eval/accuracy, macro eval/precision, eval/recall, eval/f1, and a
                  confusion matrix image (WORKDIR/plots/confusion_matrix.png)
  tagging         eval/loss, eval/token_accuracy and, for BIO tags, entity-level
                  eval/precision, eval/recall, eval/f1 (as seqeval counts them)
  seq2seq, prompt/response
                  eval/loss and, when eval.max_new_tokens > 0, greedy generations scored with
                  eval/exact_match, eval/bleu, eval/rouge_l
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from lm_research import sharding
from lm_research.data import length_buckets
from lm_research.task_metrics import classification as cls_metrics
from lm_research.task_metrics import generation as gen_metrics
from lm_research.task_metrics import tagging as tag_metrics
from lm_research.tasks import examples as task_examples


def synchronised(batches: Iterator[dict], limit: int = 0) -> Iterator[dict]:
  """This process's eval batches until every process has run out (then all-zero batches).

  Processes may hold different numbers of batches; each step must be run by all of them.
  ``limit`` > 0 stops after that many.
  """
  template = None
  for _ in itertools.count() if not limit else range(limit):
    batch = next(batches, None)
    if template is None and batch is not None:
      template = {k: np.zeros_like(v) for k, v in batch.items()}
    more = batch is not None
    if jax.process_count() > 1:
      more = bool(multihost_utils.process_allgather(np.int32(more)).max())
    if not more:
      return
    yield batch if batch is not None else template


def _classify(graphdef, params, batch):
  """Probabilities [B, C], plus the batch fields the host needs."""
  model = nnx.merge(graphdef, params)
  logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"]).logits
  return {"probs": jax.nn.softmax(logits, -1), "label": batch["label"],
          "weight": batch["weight"], "index": batch["index"]}


def _tag(graphdef, params, batch):
  """Predicted tags [B, T], each row's cross-entropy sum, and the batch fields the host needs."""
  model = nnx.merge(graphdef, params)
  logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"]).logits
  seen = batch["tags"] < logits.shape[-1]  # unseen eval tags: scored wrong, not in the loss
  gold = jnp.take_along_axis(logits, jnp.where(seen, batch["tags"], 0)[..., None], -1)[..., 0]
  ce = (jax.nn.logsumexp(logits, -1) - gold) * batch["tag_weights"] * seen
  return {"pred": jnp.argmax(logits, -1).astype(jnp.int32), "ce": ce.sum(-1),
          "tags": batch["tags"], "tag_weights": batch["tag_weights"], "index": batch["index"],
          "word_offset": batch["word_offset"]}


@functools.lru_cache(maxsize=8)
def compiled(kind: str, graphdef, mesh):
  """The jitted prediction function, outputs replicated so every process can read them."""
  fn = {"classification": _classify, "tagging": _tag}[kind]
  return jax.jit(functools.partial(fn, graphdef), out_shardings=NamedSharding(mesh, P()))


def _gather(exp, graphdef, params, batches, kind: str) -> dict[str, np.ndarray]:
  """Every eval row's outputs, concatenated (padding rows included; their weights are 0; batches
  of shorter rows padded to the widest)."""
  fn = compiled(kind, graphdef, exp.mesh)
  parts: dict[str, list] = {}
  for host_batch in synchronised(batches, exp.config.eval.steps):
    out = jax.device_get(fn(params, sharding.global_batch(exp.mesh, host_batch)))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  if not parts:
    raise ValueError("the eval set produced no batches; check data.eval_path")
  return {k: length_buckets.concat_rows(v) for k, v in parts.items()}


def classification_metrics(exp, graphdef, params, batches, step: int) -> dict[str, float]:
  """Loss, accuracy, macro P/R/F1 over the eval records (a record's windows averaged); saves
  the confusion matrix image."""
  out = _gather(exp, graphdef, params, batches, "classification")
  real = out["weight"] > 0
  _, probs = task_examples.document_probs(out["probs"][real], out["index"][real])
  _, first_row = np.unique(out["index"][real], return_index=True)
  gold = out["label"][real][first_row]
  pred = probs.argmax(-1)
  loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(gold)), gold], 1e-30))))
  confusion = cls_metrics.confusion_matrix(gold, pred, len(exp.labels))
  scores = cls_metrics.classification_scores(confusion)
  if jax.process_index() == 0 and exp.workdir:
    path = os.path.join(exp.workdir, "plots", "confusion_matrix.png")
    cls_metrics.save_confusion_matrix(confusion, exp.labels, path)
    logging.info("step %d: confusion matrix in %s", step, path)
  return {"loss": loss, **scores, "examples": float(len(gold))}


def tagging_metrics(exp, graphdef, params, batches, step: int) -> dict[str, float]:
  """Loss, token accuracy and (BIO tags) entity P/R/F1, on whole sentences."""
  del step
  out = _gather(exp, graphdef, params, batches, "tagging")
  words: dict[int, list[tuple[int, list[int], list[int]]]] = {}
  for i in np.flatnonzero(out["tag_weights"].sum(-1) > 0):
    starts = out["tag_weights"][i] > 0
    words.setdefault(int(out["index"][i]), []).append(
        (int(out["word_offset"][i]), out["tags"][i][starts].tolist(),
         out["pred"][i][starts].tolist()))
  names = list(exp.labels) + ["<unseen in training>"]
  gold, pred = [], []
  for index in sorted(words):
    chunks = sorted(words[index])  # a long sentence's rows, in word order
    gold.append([names[t] for _, g, _ in chunks for t in g])
    pred.append([names[t] for _, _, p in chunks for t in p])
  num_words = float(out["tag_weights"].sum())
  return {"loss": float(out["ce"].sum()) / max(num_words, 1.0),
          **tag_metrics.tag_scores(gold, pred), "words": num_words}


def generation_metrics(exp, graphdef, params, source) -> dict[str, float]:
  """Greedy generations for every eval record of ``source``, scored against the targets."""
  from lm_research.tasks import generate  # noqa: PLC0415  (decoding only when asked)
  if jax.process_count() > 1:
    logging.warning("Generation metrics run on one process only; skipped in this %d-process "
                    "run (eval/loss is still reported).", jax.process_count())
    return {}
  records = [source[i] for i in range(len(source))]
  if exp.config.eval.steps:
    records = records[:exp.config.eval.steps * exp.config.train.batch_size]
  outputs = generate.generate_texts(
      exp, graphdef, params, [r["input"] for r in records],
      batch_size=exp.config.train.batch_size, max_new_tokens=exp.config.eval.max_new_tokens)
  return gen_metrics.generation_scores(outputs, [r["target"] for r in records])
