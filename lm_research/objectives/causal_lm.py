"""Causal language modelling (GPT-2): next-token examples from documents packed into rows.

A document of tokens ``d`` becomes ``input_ids = [bos] + d`` and ``targets = d + [eos]``: every
position predicts the next token of its own document, the first token included, and the stream
reads ``bos d1 eos bos d2 eos ...`` (GPT-2's tokenizer uses one id for both). The pipeline packs
these pairs into rows of ``seq_len`` tokens (concatenate, then split; a document longer than a
row continues in the next row), and ``finalize_packed`` turns the packer's output into the
batch contract: ``input_ids``, ``targets``, ``segment_ids`` (0 = padding, 1, 2, ... = document
pieces in the row), ``positions`` (restarting at 0 in each piece) and ``loss_mask``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lm_research.objectives.losses import lm_sums


def document_examples(token_ids: Sequence[int], *, bos_id: int,
                      eos_id: int) -> list[dict[str, np.ndarray]]:
  """The (input_ids, targets) pair of one document, or nothing for an empty document."""
  if not len(token_ids):
    return []
  ids = np.asarray(token_ids, np.int32)
  return [{"input_ids": np.concatenate([np.array([bos_id], np.int32), ids]),
           "targets": np.concatenate([ids, np.array([eos_id], np.int32)])}]


def finalize_packed(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed row (``input_ids``, ``targets``, ``*_segment_ids``, ``*_positions``) in batch form."""
  segment_ids = packed["input_ids_segment_ids"]
  # Inputs and targets have equal lengths per document, so the packer must split them alike.
  if not np.array_equal(segment_ids, packed["targets_segment_ids"]):
    raise AssertionError("Packed inputs and targets disagree on document boundaries.")
  return {"input_ids": packed["input_ids"].astype(np.int32),
          "targets": packed["targets"].astype(np.int32),
          "segment_ids": segment_ids.astype(np.int32),
          "positions": packed["input_ids_positions"].astype(np.int32),
          # Every non-padding target is its document's true next token (see the docstring).
          "loss_mask": (segment_ids > 0).astype(np.float32)}


def loss_numerators(model, batch, dropout_rng, z_loss):
  """Next-token cross-entropy over packed documents (sums; see objectives/losses.py)."""
  out = model(batch["input_ids"], segment_ids=batch["segment_ids"],
              positions=batch["positions"], dropout_rng=dropout_rng)
  return lm_sums(out.logits, batch["targets"], batch["loss_mask"], z_loss)
