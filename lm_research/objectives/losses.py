"""Weighted cross-entropy and the ``Objective`` interface the train and eval steps use.

Every metric is a ratio ``numerator / denominator``: numerators are sums over a (micro)batch
that depend on the model, denominators depend on the batch alone (e.g. the number of target
tokens). Computing denominators once over the whole batch makes k accumulated microbatches
equal one large batch exactly, and lets evaluation average over batches without bias.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a training objective tells the engine: its loss and metrics, and for pretraining
  objectives how documents become rows (``examples``) and what a synthetic batch looks like."""

  name: str
  families: tuple[str, ...]  # the model families it trains
  numerators: Callable  # (model, batch, dropout_rng, z_loss) -> {term: sum}
  denominators: Callable[[Batch], dict]  # batch -> {denominator name: count}
  terms: Mapping[str, str]  # metric term -> name of its denominator
  loss_terms: tuple[str, ...]  # terms that add up to the optimised loss
  tokens: Callable[[Batch], jax.Array]  # tokens processed in a batch (for tokens/s)
  # (tokenizer, seq_len, **options) -> document example builder (objectives/documents.py);
  # None for fine-tuning objectives, whose rows come from a task's row builder.
  examples: type | None = None
  # (rng, batch, length, vocab, data_cfg) -> a random batch of the format (data/synthetic.py).
  synthetic: Callable | None = None
  # (input length) -> decoder length, for encoder-decoder objectives (T5's 512 -> 114 rule).
  decoder_length: Callable[[int], int] | None = None
  # (data_cfg, seq_len) -> rows of MLM logits per example, for objectives that predict only at
  # masked positions (what the model's FLOPs count); None: every position.
  predictions_per_row: Callable | None = None

  @property
  def options(self) -> tuple[str, ...]:
    """The config.data keys its example builder takes."""
    return self.examples.options if self.examples is not None else ()

  def ratios(self, numerators: Mapping, denominators: Mapping) -> dict[str, jax.Array]:
    """Each term divided by its denominator, plus 'loss' = the sum of the loss terms."""
    out = {t: numerators[t] / jnp.maximum(denominators[d], 1.0) for t, d in self.terms.items()}
    if "loss" not in out:
      out["loss"] = sum(out[t] for t in self.loss_terms)
    return out


def cross_entropy_sums(logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array,
                       z_loss: float = 0.0) -> dict[str, jax.Array]:
  """Weighted sums of token cross-entropy, z-loss (log Z)^2 and correct argmax predictions.

  One maximum over the vocabulary serves the stable log-sum-exp, the z-loss and the accuracy
  (a prediction is correct when the target's logit is the row's maximum): a separate argmax
  would read the [B, T, V] logits once more (its own 2048 x 50257 reduction, ~1.5% of a GPT-2
  small CPU step in a profile).
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  weights_BT = weights_BT.astype(jnp.float32)
  max_BT = jax.lax.stop_gradient(jnp.max(logits_BTV, axis=-1))
  log_z_BT = max_BT + jnp.log(jnp.sum(jnp.exp(logits_BTV - max_BT[..., None]), axis=-1))
  target_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  sums = {
      "ce": jnp.sum((log_z_BT - target_BT) * weights_BT),
      "correct": jnp.sum((target_BT >= max_BT) * weights_BT),
  }
  if z_loss:
    sums["z"] = z_loss * jnp.sum(jnp.square(log_z_BT) * weights_BT)
  return sums


def lm_sums(logits_BTV, targets_BT, weights_BT, z_loss: float) -> dict[str, jax.Array]:
  """Language-model numerators: 'loss' (cross-entropy + z-loss), 'ce', 'accuracy'."""
  sums = cross_entropy_sums(logits_BTV, targets_BT, weights_BT, z_loss)
  return {"loss": sums["ce"] + sums.get("z", 0.0), "ce": sums["ce"], "accuracy": sums["correct"]}


def lm_denominators(batch: Batch) -> dict[str, jax.Array]:
  """The number of target tokens that count (``loss_mask``)."""
  return {"tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}
