"""Losses of the classification fine-tuning tasks: one label per sequence, or per word.

Batch formats (objectives/registry.py; built by tasks/examples.py):
  classification: input_ids, attention_mask, token_type_ids [B, T]; label, weight [B]
  tagging:        input_ids, attention_mask, token_type_ids, tags, tag_weights [B, T]
Packed rows (data.pack_examples) add segment_ids and positions [B, T], and hold per-example
fields (label, weight) as [B, K] with segment_starts / segment_ends [B, K].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm_research.objectives.losses import cross_entropy_sums


def _outputs(model, batch, dropout_rng):
  """The model on a batch; packed rows (data/example_packing.py) bring segment ids and
  positions, which keep attention and positions inside each example."""
  packed = {k: batch[k] for k in ("segment_ids", "positions") if k in batch}
  return model(batch["input_ids"], attention_mask=batch["attention_mask"],
               token_type_ids=batch["token_type_ids"], dropout_rng=dropout_rng, **packed)


def _per_example_logits(model, out, batch, dropout_rng):
  """[B, K, C] logits of each example of packed rows, pooled as the model pools a whole row:
  [CLS] (its first token; a decoder's last), or the mean of its tokens, then pooler/classifier."""
  cfg, hidden_BTD = model.cfg, out.hidden_states
  if cfg.pooling == "mean":
    slots = jnp.arange(1, batch["segment_starts"].shape[1] + 1)
    member_BKT = (batch["segment_ids"][:, None, :] == slots[None, :, None]).astype(
        hidden_BTD.dtype)
    summary_BKD = jnp.einsum("bkt,btd->bkd", member_BKT, hidden_BTD) / jnp.maximum(
        member_BKT.sum(-1, keepdims=True), 1.0)
  else:
    at_BK = batch["segment_starts"] if cfg.family == "encoder" else batch["segment_ends"] - 1
    summary_BKD = jnp.take_along_axis(hidden_BTD, jnp.maximum(at_BK, 0)[..., None], axis=1)
  if getattr(cfg, "pooler", False) and cfg.family == "encoder":
    summary_BKD = model.pooler(summary_BKD)
  rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, 2)
  return model.classifier(summary_BKD, rng).astype(jnp.float32)


def sequence_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy and correct predictions summed over weighted examples."""
  out = _outputs(model, batch, dropout_rng)
  if "segment_starts" in batch:  # packed rows: [B, K] examples
    sums = cross_entropy_sums(_per_example_logits(model, out, batch, dropout_rng),
                              batch["label"], batch["weight"], z_loss)
  else:
    sums = cross_entropy_sums(out.logits[:, None], batch["label"][:, None],
                              batch["weight"][:, None], z_loss)
  return {"loss": sums["ce"] + sums.get("z", 0.0), "accuracy": sums["correct"]}


def sequence_denominators(batch):
  """The number of real (weighted) examples."""
  return {"examples": jnp.sum(batch["weight"].astype(jnp.float32))}


def token_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy and correct tags summed over each word's first piece."""
  logits_BTC = _outputs(model, batch, dropout_rng).logits
  sums = cross_entropy_sums(logits_BTC, batch["tags"], batch["tag_weights"], z_loss)
  return {"loss": sums["ce"] + sums.get("z", 0.0), "token_accuracy": sums["correct"]}


def token_denominators(batch):
  """The number of tagged words."""
  return {"words": jnp.sum(batch["tag_weights"].astype(jnp.float32))}
