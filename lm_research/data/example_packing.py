"""Several short fine-tuning examples in one row (``data.pack_examples``), each its own segment.

Rows of a task (tasks/examples.py: classification, tagging, prompt/response, chat) are placed
best-fit, longest first, into rows of the same width; a packed row holds the examples' tokens one
after another, with

  segment_ids      1, 2, ... per example, 0 on padding: attention stays inside each example
  positions        restarting at 0 in each example, so each sees the positions it would alone
  segment_starts,  [K] where each example's tokens begin and end (exclusive); the heads pool
  segment_ends     per example there (objectives/classification.py)

and every per-example field (label, weight, index, ...) as [K], K the most examples any packed
row holds (empty slots are zero: weight 0). Losses are per example as in unpacked rows (tested
equal). Packing happens once, so the same examples share a row every epoch; evaluation and
predict never pack. Rows of two sequences (T5's encoder and decoder) are not packed.
"""

from __future__ import annotations

import bisect

import numpy as np

from lm_research.data.length_buckets import PreparedRows

_REBUILT = ("segment_ids", "positions")  # made anew per packed row


def _bins(lengths: np.ndarray, width: int) -> list[list[int]]:
  """Row ids per packed row: longest first, each into the fullest row it still fits."""
  bins: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (room left, bin), sorted
  for i in np.argsort(-lengths, kind="stable"):
    n = int(lengths[i])
    at = bisect.bisect_left(free, (n, -1))
    if at == len(free):
      bins.append([int(i)])
      room, b = width - n, len(bins) - 1
    else:
      room, b = free.pop(at)
      bins[b].append(int(i))
      room -= n
    bisect.insort(free, (room, b))
  return bins


def pack(prepared: PreparedRows, buckets: int, multiple: int) -> PreparedRows:
  """``prepared``'s rows packed into rows of the same width (see the module docstring)."""
  if len(prepared.lengths) != 1:
    raise ValueError("data.pack_examples packs rows of one sequence (classification, tagging, "
                     "causal LM); seq2seq rows have two, so set data.pack_examples=False.")
  (width, lengths), = prepared.lengths.items()
  bins = _bins(lengths, width)
  slots = max(len(b) for b in bins)
  fields = prepared.fields
  rows = []
  for members in bins:
    row = {name: np.zeros((width,) + v.shape[2:], v.dtype) for name, v in fields.items()
           if v.ndim >= 2 and v.shape[1] == width and name not in _REBUILT}
    row.update({name: np.zeros((slots,), v.dtype) for name, v in fields.items() if v.ndim == 1})
    row["segment_ids"] = np.zeros((width,), np.int32)
    row["positions"] = np.zeros((width,), np.int32)
    row["segment_starts"] = np.zeros((slots,), np.int32)
    row["segment_ends"] = np.zeros((slots,), np.int32)
    start = 0
    for slot, i in enumerate(members):
      n = int(lengths[i])
      for name, v in fields.items():
        if v.ndim == 1:
          row[name][slot] = v[i]
        elif v.shape[1] == width and name not in _REBUILT:
          row[name][start:start + n] = v[i, :n]
      row["segment_ids"][start:start + n] = slot + 1
      row["positions"][start:start + n] = np.arange(n)
      row["segment_starts"][slot], row["segment_ends"][slot] = start, start + n
      start += n
    rows.append(row)
  return PreparedRows(rows, buckets, multiple)
