"""The pretraining objectives by name: 'causal_lm', 'mlm_nsp', 'span_corruption'.

Each objective's module holds its example construction and its loss; this table tells the
engine which is which. Batch formats (host batches of numpy arrays; the pipeline's contract):
  causal_lm:       input_ids, targets, segment_ids, positions, loss_mask            [B, T]
  mlm_nsp:         input_ids, token_type_ids, attention_mask, mlm_targets, mlm_weights [B, T];
                   nsp_labels, nsp_weights [B]
  span_corruption: input_ids, segment_ids, positions [B, S]; decoder_input_ids, targets,
                   decoder_segment_ids, decoder_positions, loss_mask [B, T]
"""

from __future__ import annotations

import jax.numpy as jnp

from lm_research.objectives import causal_lm, masked_lm, span_corruption
from lm_research.objectives.losses import Objective, lm_denominators

_LM_TERMS = {"loss": "tokens", "ce": "tokens", "accuracy": "tokens"}

OBJECTIVES = {
    "causal_lm": Objective(
        name="causal_lm", family="decoder", numerators=causal_lm.loss_numerators,
        denominators=lm_denominators, terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0)),
    "mlm_nsp": Objective(
        name="mlm_nsp", family="encoder", numerators=masked_lm.loss_numerators,
        denominators=masked_lm.loss_denominators,
        terms={"mlm_loss": "masked", "mlm_accuracy": "masked", "nsp_loss": "examples",
               "nsp_accuracy": "examples"},
        loss_terms=("mlm_loss", "nsp_loss"),
        tokens=lambda b: jnp.sum(b["attention_mask"])),
    "span_corruption": Objective(
        name="span_corruption", family="encoder_decoder",
        numerators=span_corruption.loss_numerators, denominators=lm_denominators,
        terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0) + jnp.sum(b["decoder_segment_ids"] != 0)),
}


def get_objective(name: str) -> Objective:
  """Looks an objective up by name, or says which names exist."""
  if name not in OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
  return OBJECTIVES[name]
