"""Packing examples into fixed-length rows with Grain's experimental packers, checkpoint-safe.

``concat_then_split``: causal LM (documents run on into the next row, nothing is padded except
the end of the data). ``first_fit``: span corruption (whole examples, several per row).
Both emit ``{feature}``, ``{feature}_segment_ids`` and ``{feature}_positions`` per packed feature.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain


def _tuples_for_slices(state: Any) -> Any:
  """ConcatThenSplit state with its ``remainder_slices`` pairs turned back into tuples.

  Grain's checkpoint handler stores iterator state as JSON, which turns the tuple (-1, -1)
  ("no remainder") into the list [-1, -1]; grain 0.2.18's ConcatThenSplit compares against
  the tuple, takes the list for a remainder and silently drops a document on restore.
  """
  if not isinstance(state, Mapping):
    return state
  state = dict(state)
  if "remainder_slices" in state:
    state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
  return state


class _JsonSafeIterator(grain.DatasetIterator):
  """Passes elements and state through; repairs JSON-decoded state on ``set_state``."""

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(_tuples_for_slices(state))


class _JsonSafeIterDataset(grain.IterDataset):
  """A ConcatThenSplit dataset whose iterators restore from JSON-decoded state."""

  def __init__(self, parent: grain.IterDataset):
    super().__init__(parent)

  def __iter__(self) -> grain.DatasetIterator:
    return _JsonSafeIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "JsonSafeIterDataset"


def concat_then_split(ds: grain.IterDataset, lengths: Mapping[str, int]) -> grain.IterDataset:
  """Concatenates examples and cuts rows of ``lengths`` tokens; a long example spans rows."""
  return _JsonSafeIterDataset(
      grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=dict(lengths)))


def first_fit(ds: grain.IterDataset, lengths: Mapping[str, int],
              num_bins: int) -> grain.IterDataset:
  """Packs whole examples into ``num_bins`` rows at a time, each into the first row with room."""
  return grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=dict(lengths), num_packing_bins=num_bins, shuffle_bins=False)
