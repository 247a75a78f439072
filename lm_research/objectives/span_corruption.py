"""Span corruption (T5): denoising examples built from documents, packed into rows.

Mirrors T5/seqio's ``span_corruption`` preprocessor in numpy: documents are cut into pieces of
``tokens_length`` tokens (``random_spans_helper``: 568 for 512 encoder inputs, 141 for 128), a
noise mask with density 0.15 and mean span length 3 is drawn (``random_spans_noise_mask``), each
noise span in the inputs and each non-noise span in the targets becomes one sentinel, in T5's
order (the first span gets ``sentinel_ids[0]`` = ``<extra_id_0>``, the next ``<extra_id_1>``, ...)
and eos ends both. T5 concatenates documents before cutting; here each document is cut on its
own and the pipeline packs short pieces together with segment ids, so nothing attends across
documents. ``finalize_packed`` builds the decoder side of the batch contract.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lm_research.objectives.losses import lm_sums


def random_spans_helper(inputs_length: int, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0, extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """T5's ``random_spans_helper``: (tokens before noise, targets length) for ``inputs_length``.

  The longest raw length whose corrupted inputs (sentinels and eos included) fit in
  ``inputs_length``; 512 -> (568, 114).
  """
  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  # T5's tweak so that density 0.5 gives targets no longer than inputs.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator):
  """Lengths of a uniformly random split of ``num_items`` into ``num_segments`` non-empty runs."""
  first_in_segment = np.zeros((num_items,), np.int64)
  first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
  return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
  """T5's noise mask: boolean [length], alternating non-noise and noise spans, non-noise first."""
  orig_length = length
  length = max(length, 2)  # T5: avoid degeneracy, then cut back to the original length
  # float32 arithmetic as T5's TF code, so halves round the same way (e.g. 30 * 0.15 -> 5).
  num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length))), 1)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  start_indicator = np.zeros((length,), np.int64)
  np.add.at(start_indicator, span_starts, 1)
  return (np.cumsum(start_indicator) % 2 == 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                  sentinel_ids: Sequence[int]) -> np.ndarray:
  """Each noise span replaced by the next sentinel (sentinel_ids[0] first)."""
  prev_noise = np.concatenate([[False], noise_mask[:-1]])
  first_noise = noise_mask & ~prev_noise
  span_index = np.cumsum(first_noise) - 1
  if first_noise.any() and span_index[-1] >= len(sentinel_ids):
    raise ValueError(f"{span_index[-1] + 1} noise spans but only {len(sentinel_ids)} sentinel "
                     "ids; use a shorter sequence length or a lower noise density.")
  out = np.where(first_noise, np.asarray(sentinel_ids)[np.maximum(span_index, 0)], tokens)
  return out[~(noise_mask & prev_noise)].astype(np.int32)


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                     sentinel_ids: Sequence[int]) -> np.ndarray:
  """The targets: each non-noise span replaced by the next sentinel."""
  return noise_span_to_unique_sentinel(tokens, ~noise_mask, sentinel_ids)


class SpanCorruptionBuilder:
  """Turns one document into (inputs, targets) pieces of at most input/targets_length tokens."""

  def __init__(self, tokenizer, *, input_length: int, noise_density: float = 0.15,
               mean_noise_span_length: float = 3.0):
    self.noise_density = noise_density
    self.mean_noise_span_length = mean_noise_span_length
    self.input_length = input_length
    self.tokens_length, self.targets_length = random_spans_helper(
        input_length, noise_density, mean_noise_span_length)
    self.sentinel_ids = np.asarray(tokenizer.sentinel_ids, np.int32)
    self.eos_id = tokenizer.eos_id
    # Fail at construction, not mid-epoch: a full piece's span count is the largest there is.
    num_noise = round(self.tokens_length * noise_density)
    if round(num_noise / mean_noise_span_length) > len(self.sentinel_ids):
      raise ValueError(f"seq_len {input_length} gives more noise spans than the tokenizer's "
                       f"{len(self.sentinel_ids)} sentinels; shorten seq_len.")

  def corrupt(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One piece: sentinel-delimited inputs and targets, each ending with eos."""
    mask = random_spans_noise_mask(len(tokens), rng, self.noise_density,
                                   self.mean_noise_span_length)
    eos = np.array([self.eos_id], np.int32)
    return {"inputs": np.concatenate([noise_span_to_unique_sentinel(tokens, mask,
                                                                    self.sentinel_ids), eos]),
            "targets": np.concatenate([nonnoise_span_to_unique_sentinel(tokens, mask,
                                                                        self.sentinel_ids), eos])}

  def __call__(self, token_ids: Sequence[int],
               rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """All pieces of one document (T5's ``split_tokens`` then ``denoise``)."""
    ids = np.asarray(token_ids, np.int32)
    return [self.corrupt(ids[start:start + self.tokens_length], rng)
            for start in range(0, len(ids), self.tokens_length)]


def decoder_inputs(targets: np.ndarray, segment_ids: np.ndarray,
                   positions: np.ndarray) -> np.ndarray:
  """Targets shifted right within each packed segment; 0 (T5's decoder start) at each start."""
  shifted = np.concatenate([np.zeros_like(targets[..., :1]), targets[..., :-1]], axis=-1)
  return np.where((positions > 0) & (segment_ids > 0), shifted, 0).astype(np.int32)


def finalize_packed(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed row (``inputs``, ``targets``, ``*_segment_ids``, ``*_positions``) as a batch row."""
  targets = packed["targets"].astype(np.int32)
  dec_segments = packed["targets_segment_ids"].astype(np.int32)
  dec_positions = packed["targets_positions"].astype(np.int32)
  return {"input_ids": packed["inputs"].astype(np.int32),
          "segment_ids": packed["inputs_segment_ids"].astype(np.int32),
          "positions": packed["inputs_positions"].astype(np.int32),
          "decoder_input_ids": decoder_inputs(targets, dec_segments, dec_positions),
          "targets": targets,
          "decoder_segment_ids": dec_segments,
          "decoder_positions": dec_positions,
          "loss_mask": (dec_segments > 0).astype(np.float32)}


def loss_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy on the sentinel-delimited targets (sums; see objectives/losses.py)."""
  out = model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"],
              decoder_input_ids=batch["decoder_input_ids"],
              decoder_segment_ids=batch["decoder_segment_ids"],
              decoder_positions=batch["decoder_positions"], dropout_rng=dropout_rng)
  return lm_sums(out.logits, batch["targets"], batch["loss_mask"], z_loss)
