"""The objectives by name: pretraining 'causal_lm', 'mlm_nsp', 'span_corruption'; fine-tuning
'classification', 'tagging', 'seq2seq' (and 'causal_lm' again, on new text or prompt/response).

Each objective's module holds its example construction and its loss; this table tells the
engine which is which. Batch formats (host batches of numpy arrays; the pipeline's contract):
  causal_lm:       input_ids, targets, segment_ids, positions, loss_mask            [B, T]
  mlm_nsp:         input_ids, token_type_ids, attention_mask, mlm_targets, mlm_weights [B, T];
                   nsp_labels, nsp_weights [B]
  span_corruption: input_ids, segment_ids, positions [B, S]; decoder_input_ids, targets,
                   decoder_segment_ids, decoder_positions, loss_mask [B, T]
  classification:  input_ids, attention_mask, token_type_ids [B, T]; label, weight, index [B]
  tagging:         input_ids, attention_mask, token_type_ids, tags, tag_weights [B, T];
                   labelled, index, word_offset [B]
  seq2seq:         the span_corruption format, one (input, target) pair per row; index [B]
Fine-tuning rows carry ``index``, the record they came from (tasks/examples.py).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lm_research.data import synthetic
from lm_research.objectives import causal_lm, classification, documents, masked_lm
from lm_research.objectives import span_corruption
from lm_research.objectives.losses import Objective, lm_denominators

_LM_TERMS = {"loss": "tokens", "ce": "tokens", "accuracy": "tokens"}

OBJECTIVES = {
    "causal_lm": Objective(
        name="causal_lm", families=("decoder",), numerators=causal_lm.loss_numerators,
        denominators=lm_denominators, terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0),
        examples=documents.CausalLmExamples, synthetic=synthetic.causal_lm_batch),
    "mlm_nsp": Objective(
        name="mlm_nsp", families=("encoder",), numerators=masked_lm.loss_numerators,
        denominators=masked_lm.loss_denominators,
        terms={"mlm_loss": "masked", "mlm_accuracy": "masked", "nsp_loss": "examples",
               "nsp_accuracy": "examples"},
        loss_terms=("mlm_loss", "nsp_loss"),
        tokens=lambda b: jnp.sum(b["attention_mask"]),
        examples=documents.MlmNspExamples, synthetic=synthetic.mlm_nsp_batch,
        predictions_per_row=masked_lm.predictions_per_row),
    "span_corruption": Objective(
        name="span_corruption", families=("encoder_decoder",),
        numerators=span_corruption.loss_numerators, denominators=lm_denominators,
        terms=_LM_TERMS, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["segment_ids"] != 0) + jnp.sum(b["decoder_segment_ids"] != 0),
        examples=documents.SpanCorruptionExamples, synthetic=synthetic.span_corruption_batch,
        decoder_length=lambda seq_len: span_corruption.random_spans_helper(seq_len)[1]),
    "classification": Objective(
        name="classification", families=("encoder", "decoder"),
        numerators=classification.sequence_numerators,
        denominators=classification.sequence_denominators,
        terms={"loss": "examples", "accuracy": "examples"}, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["attention_mask"])),
    "tagging": Objective(
        name="tagging", families=("encoder", "decoder"),
        numerators=classification.token_numerators,
        denominators=classification.token_denominators,
        terms={"loss": "words", "token_accuracy": "words"}, loss_terms=("loss",),
        tokens=lambda b: jnp.sum(b["attention_mask"])),
}
# Seq2seq rows are span corruption's batch format with one (input, target) pair each, built by
# the seq2seq task's row builder rather than from documents.
OBJECTIVES["seq2seq"] = dataclasses.replace(OBJECTIVES["span_corruption"], name="seq2seq",
                                            examples=None, decoder_length=lambda s: s)
# The pretraining objectives: examples built from plain documents.
PRETRAINING = tuple(name for name, o in OBJECTIVES.items() if o.examples is not None)


def get_objective(name: str) -> Objective:
  """Looks an objective up by name, or says which names exist."""
  if name not in OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
  return OBJECTIVES[name]
