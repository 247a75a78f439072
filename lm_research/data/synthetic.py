"""Seeded random batches shaped like each objective's real ones, for tests and benchmarks.

Batch ``step`` is a pure function of (seed, step), so resumed and multi-process runs see the
same data; each process takes its own rows of the global batch.
"""

from __future__ import annotations

import numpy as np

from lm_research.objectives import masked_lm
from lm_research.objectives.span_corruption import random_spans_helper

FIRST_TOKEN = 5  # ids below this are left to special tokens (pad, eos, cls, sep, mask)


def _packed_segments(rng: np.random.Generator, batch: int, length: int):
  """Two documents and some padding per row: segment ids and restarting positions."""
  segments = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for row in range(batch):
    used = int(rng.integers(length * 3 // 4, length + 1))
    split = int(rng.integers(1, max(used, 2)))
    segments[row, :split] = 1
    segments[row, split:used] = 2
    positions[row, :split] = np.arange(split)
    positions[row, split:used] = np.arange(used - split)
  return segments, positions


def causal_lm_batch(rng, batch, length, vocab, data_cfg=None):
  """Packed next-token rows: two documents and some padding per row."""
  del data_cfg
  segments, positions = _packed_segments(rng, batch, length)
  tokens = rng.integers(FIRST_TOKEN, vocab, (batch, length + 1)).astype(np.int32)
  same_doc = np.concatenate([segments[:, 1:] == segments[:, :-1],
                             np.zeros((batch, 1), bool)], axis=1)
  return {"input_ids": tokens[:, :-1] * (segments != 0), "targets": tokens[:, 1:],
          "segment_ids": segments, "positions": positions,
          "loss_mask": (same_doc & (segments != 0)).astype(np.float32)}


def mlm_nsp_batch(rng, batch, length, vocab, data_cfg=None):
  """Sentence pairs with 15% of tokens to predict, at most ``data.max_predictions_per_seq``."""
  used = rng.integers(length // 2, length + 1, batch)
  mask = (np.arange(length)[None, :] < used[:, None]).astype(np.int32)
  tokens = rng.integers(FIRST_TOKEN, vocab, (batch, length)).astype(np.int32) * mask
  split = used // 2
  types = ((np.arange(length)[None, :] >= split[:, None]) & (mask == 1)).astype(np.int32)
  # 15% of each row's tokens (never position 0, the [CLS] slot), at most max_predictions of
  # them, listed in mlm_positions padded with 0 as the real pipeline does.
  predictions = (masked_lm.predictions_per_row(data_cfg, length) if data_cfg is not None
                 else masked_lm.default_max_predictions(length))
  weights = np.zeros((batch, length), np.float32)
  mlm_positions = np.zeros((batch, predictions), np.int32)
  for row in range(batch):
    count = min(predictions, max(1, round(0.15 * int(used[row]))))
    chosen = np.sort(rng.choice(np.arange(1, used[row]), count, replace=False))
    weights[row, chosen] = 1.0
    mlm_positions[row, :count] = chosen
  return {"input_ids": tokens, "token_type_ids": types, "attention_mask": mask,
          "mlm_targets": rng.integers(FIRST_TOKEN, vocab, (batch, length)).astype(np.int32),
          "mlm_weights": weights, "mlm_positions": mlm_positions,
          "nsp_labels": rng.integers(0, 2, batch).astype(np.int32),
          "nsp_weights": np.ones(batch, np.float32)}


def span_corruption_batch(rng, batch, length, vocab, data_cfg=None):
  """Packed (inputs, targets) rows at T5's target length for ``length`` inputs."""
  del data_cfg
  target_length = random_spans_helper(length)[1]  # T5's: inputs 512 -> targets 114
  enc_segments, enc_positions = _packed_segments(rng, batch, length)
  dec_segments, dec_positions = _packed_segments(rng, batch, target_length)
  targets = rng.integers(FIRST_TOKEN, vocab, (batch, target_length)).astype(np.int32)
  shifted = np.where(dec_positions == 0, 0, np.roll(targets, 1, axis=1)) * (dec_segments != 0)
  return {"input_ids": rng.integers(FIRST_TOKEN, vocab, (batch, length)).astype(np.int32)
                       * (enc_segments != 0),
          "segment_ids": enc_segments, "positions": enc_positions,
          "decoder_input_ids": shifted.astype(np.int32), "targets": targets * (dec_segments != 0),
          "decoder_segment_ids": dec_segments, "decoder_positions": dec_positions,
          "loss_mask": (dec_segments != 0).astype(np.float32)}


def synthetic_batch(objective, *, step: int, seed: int, batch_size: int, seq_len: int,
                    vocab_size: int, process_index: int = 0, process_count: int = 1,
                    data_cfg=None) -> dict[str, np.ndarray]:
  """This process's rows of global batch number ``step`` for ``objective`` (an Objective or a
  pretraining objective's name); ``data_cfg``: the options that shape a batch (mlm_nsp's
  masked positions per row; default: ceil of 15% of seq_len)."""
  if isinstance(objective, str):
    from lm_research.objectives.registry import get_objective  # noqa: PLC0415  (it imports us)
    objective = get_objective(objective)
  if objective.synthetic is None:
    raise ValueError(f"objective={objective.name!r} has no synthetic batches; use real data "
                     "(data.source='files' or a catalog name).")
  rng = np.random.default_rng([seed, step])
  batch = objective.synthetic(rng, batch_size, seq_len, vocab_size, data_cfg)
  rows = batch_size // process_count
  return {k: v[process_index * rows:(process_index + 1) * rows] for k, v in batch.items()}


class SyntheticSource:
  """An endless, checkpointable iterator of synthetic batches (state = next step)."""

  def __init__(self, objective: str, **kwargs):
    self.objective = objective
    self.kwargs = kwargs
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = synthetic_batch(self.objective, step=self.step, **self.kwargs)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    """Iterator position, for checkpoints."""
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    """Continues from a position saved by ``get_state``."""
    self.step = int(state["step"])
