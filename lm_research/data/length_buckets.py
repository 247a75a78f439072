"""Fine-tuning batches grouped by length: every row built once, each batch cut to a bucket.

Fine-tuning rows (tasks/examples.py) are padded to ``train.seq_len``, but most texts are far
shorter: computing a batch at full width spends most FLOPs on padding. Here all rows of a
split are built once and kept in host memory (``PreparedRows``); a batch takes rows of
similar length and is cut to the shortest bucket that holds its longest row, so a step
computes little padding. The buckets are a few fixed lengths: the ``data.length_buckets``
lengths that pad the split's rows least (multiples of 8, or of the Pallas kernels' 128-token
tile), and the row width, so each compiles once and the jit cache serves it after.

Training order (``BucketedBatches``): each epoch a seeded shuffle, rows sorted by length within
windows of ``WINDOW_BATCHES`` batches (Hugging Face's group_by_length does the same), then
the batches shuffled. The order depends on (seed, epoch) only, so the iterator's state is a
step count: resumes are exact, and any process count sees the same global batches (each
process takes its slice of every global batch; all of them cut it to the same bucket).
Evaluation and predict: rows sorted by length, longest first, one pass. An epoch's last
batch is filled with all-zero rows, which weigh nothing, so every row is seen once an epoch.

Cutting is exact: positions past a row's last real token are padding in every field (masks
and weights 0), and attention, pooling and losses ignore them.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np
from absl import logging

# The fields that say where a row's real tokens end, one per sequence the batch holds.
MASK_FIELDS = ("attention_mask", "segment_ids", "decoder_segment_ids")
# Rows sorted by length together: big enough for near-uniform batches, small enough that a
# batch still draws from all over the data.
WINDOW_BATCHES = 64


def bucket_lengths(lengths: np.ndarray, width: int, count: int, multiple: int) -> tuple[int, ...]:
  """The row lengths batches are cut to: the ``count`` lengths (multiples of ``multiple``, the
  last one the longest row's) that pad ``lengths`` least when each row takes the shortest that
  holds it, and ``width`` itself. Exact, by dynamic programming over the distinct lengths."""
  rounded = np.clip(np.ceil(np.asarray(lengths) / multiple) * multiple, multiple, width)
  values, counts = np.unique(rounded.astype(np.int64), return_counts=True)
  rows_upto = np.concatenate([[0], np.cumsum(counts)])  # rows_upto[j + 1]: rows of values <= j
  # cost[j]: fewest padded tokens for the rows up to values[j], a bucket ending at values[j].
  cost = values * rows_upto[1:]
  back = []
  for _ in range(count - 1):
    # One more bucket (values[i], values[j]] after the best cover up to values[i].
    extra = values[None, :] * (rows_upto[None, 1:] - rows_upto[1:, None])
    options = np.where(np.tri(len(values), k=-1, dtype=bool).T, cost[:, None] + extra, np.inf)
    before = options.argmin(axis=0)
    better = options[before, np.arange(len(values))] < cost
    back.append(np.where(better, before, -1))
    cost = np.where(better, options[before, np.arange(len(values))], cost)
  ends, j = [len(values) - 1], len(values) - 1
  for step in reversed(back):
    if step[j] >= 0:
      j = int(step[j])
      ends.append(j)
  return tuple(sorted({int(values[e]) for e in ends} | {width}))


def _row_lengths(mask_NW: np.ndarray) -> np.ndarray:
  """Each row's position after its last nonzero entry (0 for an all-zero row)."""
  nonzero = mask_NW != 0
  last = mask_NW.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  return np.where(nonzero.any(axis=1), last, 0)


def concat_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
  """Concatenates batches along rows, zero-padding per-token arrays to the widest batch."""
  if parts[0].ndim < 2:
    return np.concatenate(parts)
  width = max(p.shape[1] for p in parts)
  return np.concatenate([np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2))
                         for p in parts])


class PreparedRows:
  """Rows stacked field by field (``[N, ...]``), with each row's length per sequence width."""

  def __init__(self, rows: Sequence[Mapping[str, np.ndarray]], buckets: int = 4,
               multiple: int = 8):
    if not rows:
      raise ValueError("the data produced no rows; check data.train_path/data.eval_path")
    self.fields = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # Fields of one width share the lengths of that width's mask fields (several: the longest).
    self.lengths: dict[int, np.ndarray] = {}
    for name in MASK_FIELDS:
      if name in self.fields:
        width = self.fields[name].shape[1]
        rows_len = _row_lengths(self.fields[name])
        self.lengths[width] = np.maximum(self.lengths.get(width, 0), rows_len)
    self.buckets = {w: bucket_lengths(n, w, buckets, min(multiple, w))
                    for w, n in self.lengths.items()}
    self.cost = sum(self.lengths.values()) if self.lengths else np.zeros(len(rows), np.int64)

  @classmethod
  def build(cls, source, builder: Callable, name: str, buckets: int = 4, multiple: int = 8
            ) -> "PreparedRows":
    """Every row ``builder(record, index)`` makes from each record of ``source``, logged."""
    start = time.perf_counter()
    rows = [row for i in range(len(source)) for row in builder(source[i], i)]
    prepared = cls(rows, buckets, multiple)
    for width, lengths in prepared.lengths.items():
      logging.info("%s: %d rows from %d records in %.1f s; tokens per row (of %d): median %d, "
                   "max %d; batches cut to %s", name, len(rows), len(source),
                   time.perf_counter() - start, width, np.median(lengths), lengths.max(),
                   "/".join(map(str, prepared.buckets[width])))
    return prepared

  def __len__(self) -> int:
    return len(self.cost)

  def batch(self, ids: np.ndarray, local: slice) -> dict[str, np.ndarray]:
    """Rows ``ids[local]`` (-1: an all-zero row), each width cut to the bucket that holds the
    longest row of all ``ids`` (the global batch, so every process cuts alike)."""
    real = ids[ids >= 0]
    cut = {}
    for width, lengths in self.lengths.items():
      longest = int(lengths[real].max()) if len(real) else 1
      cut[width] = next(b for b in self.buckets[width] if b >= longest)
    mine = ids[local]
    out = {}
    for name, values in self.fields.items():
      part = values[np.maximum(mine, 0)]
      part[mine < 0] = 0
      if part.ndim >= 2 and part.shape[1] in cut:
        part = part[:, :cut[part.shape[1]]]
      out[name] = part
    return out


class BucketedBatches:
  """This process's rows of each global batch of ``rows``, batches grouped by length.

  ``shuffle``: training order (endless unless ``finite``); else one pass sorted by length,
  over the first ``max_batches`` batches' worth of rows in data order when that is > 0.
  """

  def __init__(self, rows: PreparedRows, *, batch_size: int, seed: int, shuffle: bool,
               finite: bool, process_index: int = 0, process_count: int = 1,
               max_batches: int = 0):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.shuffle, self.finite = shuffle, finite
    per_process = batch_size // process_count
    self.local = slice(process_index * per_process, (process_index + 1) * per_process)
    self.limit = min(len(rows), max_batches * batch_size) if max_batches else len(rows)
    self.batches_per_epoch = -(-self.limit // batch_size)
    self.step = 0
    self._plan: tuple[int, np.ndarray] | None = None

  def _epoch_plan(self, epoch: int) -> np.ndarray:
    """[batches, batch_size] row ids of one epoch (-1 fills the last batch)."""
    cost, n, size = self.rows.cost, self.limit, self.batch_size
    if self.shuffle:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(n)
      window = WINDOW_BATCHES * size
      order = np.concatenate([w[np.argsort(-cost[w], kind="stable")]
                              for w in np.split(order, range(window, n, window))])
    else:
      order = np.argsort(-cost[:n], kind="stable")
    batches = np.concatenate([order, np.full((-n) % size, -1)]).reshape(-1, size)
    return batches[rng.permutation(len(batches))] if self.shuffle else batches

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, index = divmod(self.step, self.batches_per_epoch)
    if self.finite and epoch > 0:
      raise StopIteration
    if self._plan is None or self._plan[0] != epoch:
      self._plan = (epoch, self._epoch_plan(epoch))
    self.step += 1
    return self.rows.batch(self._plan[1][index], self.local)

  def get_state(self) -> dict:
    """The position (JSON), for checkpoints."""
    return {"bucketed_step": self.step}

  def set_state(self, state: dict) -> None:
    """Continues from a ``get_state`` result."""
    if "bucketed_step" not in state:
      raise ValueError("The checkpoint's data position is from fixed-length rows; resume with "
                       "--config.data.length_buckets=0, or start a new workdir.")
    self.step = int(state["bucketed_step"])


def fitting_length(source, builder: Callable, width: int, quantile: float = 99.0,
                   multiple: int = 8) -> tuple[int, np.ndarray]:
  """(the row length that holds ``quantile`` % of the rows ``builder`` makes at ``width``,
  rounded up to ``multiple`` and at most ``width``; every row's length)."""
  lengths = []
  for i in range(len(source)):
    for row in builder(source[i], i):
      masks = [row[name][None] for name in MASK_FIELDS if name in row]
      lengths.append(max(int(_row_lengths(m)[0]) for m in masks))
  if not lengths:
    raise ValueError("the training data produced no rows; check data.train_path")
  lengths = np.asarray(lengths)
  chosen = int(np.ceil(np.percentile(lengths, quantile) / multiple) * multiple)
  return min(max(chosen, multiple), width), lengths
