"""The pretraining objectives' losses, by name: 'causal_lm', 'mlm_nsp', 'span_corruption'.

Batch formats (host batches of numpy arrays; the data pipeline's contract):
  causal_lm:       input_ids, targets, segment_ids, positions, loss_mask            [B, T]
  mlm_nsp:         input_ids, token_type_ids, attention_mask, mlm_targets, mlm_weights [B, T];
                   nsp_labels [B]
  span_corruption: input_ids, segment_ids, positions [B, S]; decoder_input_ids, targets,
                   decoder_segment_ids, decoder_positions, loss_mask [B, T]
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from lm_research.objectives.losses import Objective, cross_entropy_sums


def _lm_sums(logits, targets, weights, z_loss):
  sums = cross_entropy_sums(logits, targets, weights, z_loss)
  out = {"loss": sums["ce"] + sums.get("z", 0.0), "ce": sums["ce"], "accuracy": sums["correct"]}
  return out


def causal_lm_numerators(model, batch, dropout_rng, z_loss):
  """Next-token cross-entropy over packed documents."""
  out = model(batch["input_ids"], segment_ids=batch["segment_ids"],
              positions=batch["positions"], dropout_rng=dropout_rng)
  return _lm_sums(out.logits, batch["targets"], batch["loss_mask"], z_loss)


def masked_lm_numerators(model, batch, dropout_rng, z_loss):
  """BERT: cross-entropy on masked tokens plus next-sentence classification."""
  del z_loss  # an encoder's MLM softmax needs no z-loss
  out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
              token_type_ids=batch["token_type_ids"], dropout_rng=dropout_rng)
  mlm = cross_entropy_sums(out.logits, batch["mlm_targets"], batch["mlm_weights"])
  nsp_weights = batch.get("nsp_weights", jnp.ones_like(batch["nsp_labels"], jnp.float32))
  nsp_ce = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, batch["nsp_labels"])
  nsp_correct = jnp.argmax(out.nsp_logits, -1) == batch["nsp_labels"]
  return {"mlm_loss": mlm["ce"], "mlm_accuracy": mlm["correct"],
          "nsp_loss": jnp.sum(nsp_ce * nsp_weights),
          "nsp_accuracy": jnp.sum(nsp_correct * nsp_weights)}


def span_corruption_numerators(model, batch, dropout_rng, z_loss):
  """T5: cross-entropy on the sentinel-delimited targets."""
  out = model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"],
              decoder_input_ids=batch["decoder_input_ids"],
              decoder_segment_ids=batch["decoder_segment_ids"],
              decoder_positions=batch["decoder_positions"], dropout_rng=dropout_rng)
  return _lm_sums(out.logits, batch["targets"], batch["loss_mask"], z_loss)


def _lm_denominators(batch):
  return {"tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}


def _mlm_denominators(batch):
  nsp = batch.get("nsp_weights", jnp.ones_like(batch["nsp_labels"], jnp.float32))
  return {"masked": jnp.sum(batch["mlm_weights"].astype(jnp.float32)),
          "examples": jnp.sum(nsp.astype(jnp.float32))}


_LM_TERMS = {"loss": "tokens", "ce": "tokens", "accuracy": "tokens"}

OBJECTIVES = {
    "causal_lm": Objective(
        name="causal_lm", family="decoder", numerators=causal_lm_numerators,
        denominators=_lm_denominators, terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0)),
    "mlm_nsp": Objective(
        name="mlm_nsp", family="encoder", numerators=masked_lm_numerators,
        denominators=_mlm_denominators,
        terms={"mlm_loss": "masked", "mlm_accuracy": "masked", "nsp_loss": "examples",
               "nsp_accuracy": "examples"},
        loss_terms=("mlm_loss", "nsp_loss"),
        tokens=lambda b: jnp.sum(b["attention_mask"])),
    "span_corruption": Objective(
        name="span_corruption", family="encoder_decoder", numerators=span_corruption_numerators,
        denominators=_lm_denominators, terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0) + jnp.sum(b["decoder_segment_ids"] != 0)),
}


def get_objective(name: str) -> Objective:
  """Looks an objective up by name, or says which names exist."""
  if name not in OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
  return OBJECTIVES[name]
