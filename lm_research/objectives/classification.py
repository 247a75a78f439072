"""Losses of the classification fine-tuning tasks: one label per sequence, or per word.

Batch formats (objectives/registry.py; built by tasks/examples.py):
  classification: input_ids, attention_mask, token_type_ids [B, T]; label, weight [B]
  tagging:        input_ids, attention_mask, token_type_ids, tags, tag_weights [B, T]
"""

from __future__ import annotations

import jax.numpy as jnp

from lm_research.objectives.losses import cross_entropy_sums


def _logits(model, batch, dropout_rng):
  out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
              token_type_ids=batch["token_type_ids"], dropout_rng=dropout_rng)
  return out.logits


def sequence_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy and correct predictions summed over weighted examples."""
  logits_BC = _logits(model, batch, dropout_rng)
  sums = cross_entropy_sums(logits_BC[:, None], batch["label"][:, None],
                            batch["weight"][:, None], z_loss)
  return {"loss": sums["ce"] + sums.get("z", 0.0), "accuracy": sums["correct"]}


def sequence_denominators(batch):
  """The number of real (weighted) examples."""
  return {"examples": jnp.sum(batch["weight"].astype(jnp.float32))}


def token_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy and correct tags summed over each word's first piece."""
  logits_BTC = _logits(model, batch, dropout_rng)
  sums = cross_entropy_sums(logits_BTC, batch["tags"], batch["tag_weights"], z_loss)
  return {"loss": sums["ce"] + sums.get("z", 0.0), "token_accuracy": sums["correct"]}


def token_denominators(batch):
  """The number of tagged words."""
  return {"words": jnp.sum(batch["tag_weights"].astype(jnp.float32))}
