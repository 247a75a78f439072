"""Grain input pipelines: documents -> objective examples -> host batches, checkpointable.

One pipeline per objective, built from the same stages (docs/design.md, "How data flows"):

  MapDataset.range(num_docs)            document indices (random access, lazy)
    .shuffle(seed)                      a new order each epoch (the seed is folded with the epoch)
    .repeat(num_epochs)                 None = forever
    .map_with_index(tag)                (global example index, document index): per-example rngs
    [process_index::process_count]      each host reads a disjoint part; together they read all
    .map(build examples)                read + tokenize + the objective's example construction
    .to_iter_dataset(ReadOptions)       background threads; a document yields a list of examples
  FlatMapIterDataset(unlist)            one element per example
  WindowShuffleIterDataset              mixes examples of neighbouring documents (long documents
                                        such as a play would otherwise fill whole batches)
  objective's pack                      causal_lm: concat-then-split rows; span_corruption:
                                        first-fit packed rows, with segment ids (packing.py);
                                        mlm_nsp: one example per row (objectives/documents.py)
  .batch(batch_size)                    per-process numpy batch (formats: objectives/registry.py)
  .mp_prefetch(worker_count)            worker processes when worker_count > 0

Randomness is a pure function of (seed, global example index), so an iterator restored with
``set_state`` continues exactly, and masks and sentence pairs change from epoch to epoch.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Mapping, Sequence

from absl import flags
import grain
import numpy as np

from lm_research.objectives.losses import Objective
from lm_research.objectives.registry import PRETRAINING, get_objective

OBJECTIVES = PRETRAINING  # the objectives whose examples this pipeline builds from documents


def _text(record: Any) -> str:
  """A pretraining record's text: ``{'text': str}`` (or a bare string)."""
  if isinstance(record, str):
    return record
  if isinstance(record, Mapping) and "text" in record:
    text = record["text"]
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
  raise TypeError(f"A pretraining record must be {{'text': str}}; got {type(record).__name__}.")


def _lines(text: str) -> list[str]:
  """A document's units for NSP: its non-blank lines."""
  return [line for line in text.split("\n") if line.strip()]


class _LazyLines(Sequence):
  """A document's lines, tokenized on first access (NSP reads a few lines of a random document)."""

  def __init__(self, lines: list[str], encode):
    self._lines, self._encode, self._ids = lines, encode, {}

  def __len__(self) -> int:
    return len(self._lines)

  def __getitem__(self, j: int) -> list[int]:
    if j not in self._ids:
      self._ids[j] = self._encode(self._lines[j])
    return self._ids[j]


class _Tag(grain.transforms.MapWithIndex):
  """Attaches the global example index (epoch * num_docs + position) to a document index."""

  def map_with_index(self, index: int, doc_index: int) -> tuple[int, int]:
    return index, int(doc_index)


class _BuildExamples(grain.transforms.Map):
  """(global index, document index) -> the list of that document's examples.

  Also the ``corpus`` an objective's example builder reads other documents through.
  """

  _CACHED_DOCUMENTS = 64  # NSP's random documents; reading and splitting one costs ~3 ms

  def __init__(self, source, tokenizer, builder, seed: int, examples=None):
    self.source, self.tokenizer = source, tokenizer
    self.builder, self.seed, self.examples = builder, seed, examples
    self.num_docs = len(source)
    self._new_cache()

  def _new_cache(self):
    self._cache: collections.OrderedDict[int, _LazyLines] = collections.OrderedDict()
    self._lock = threading.Lock()  # read threads share the cache

  def __getstate__(self):
    # The cache and its lock stay behind when Grain pickles the transform into a worker.
    return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._new_cache()

  def encode_lines(self, text: str) -> list[list[int]]:
    """A document's lines as token ids (one batched call when the tokenizer has one)."""
    lines = _lines(text)
    encode_batch = getattr(self.tokenizer, "encode_batch", None)
    return encode_batch(lines) if encode_batch else [self.tokenizer.encode(x) for x in lines]

  def other_document(self, doc_index: int) -> _LazyLines:
    """Another document's lines, tokenized on demand (cached: NSP draws a few of each)."""
    with self._lock:
      if doc_index in self._cache:
        self._cache.move_to_end(doc_index)
        return self._cache[doc_index]
    lines = _LazyLines(_lines(_text(self.source[doc_index])), self.tokenizer.encode)
    with self._lock:
      self._cache[doc_index] = lines
      if len(self._cache) > self._CACHED_DOCUMENTS:
        self._cache.popitem(last=False)
    return lines

  def map(self, element: tuple[int, int]) -> list[dict[str, np.ndarray]]:
    global_index, doc_index = element
    if self.examples is not None:  # a fine-tuning record: rows without randomness
      return self.examples(self.source[doc_index], doc_index)
    # Seeded by the global index: the same example gets the same masks after a restore, and
    # another epoch (a larger index) gets new ones.
    rng = np.random.default_rng([self.seed, global_index])
    return self.builder(_text(self.source[doc_index]), doc_index, self, rng)


class _Unlist(grain.experimental.FlatMapTransform):
  """A document's list of examples -> the examples one by one."""

  max_fan_out = 1 << 30  # a long document (a play) yields hundreds of examples

  def flat_map(self, examples: list) -> list:
    return examples


def _example_builder(objective: Objective, tokenizer, seq_len: int, options: dict):
  """The objective's document example builder, or a readable error for a bad option."""
  unknown = set(options) - set(objective.options)
  if unknown:
    raise ValueError(f"Unknown option(s) {sorted(unknown)} for objective {objective.name!r}; "
                     f"it accepts {list(objective.options) or 'none'}.")
  return objective.examples(tokenizer, seq_len, **options)


def _check_args(source, objective: Objective, seq_len, batch_size, process_index, process_count,
                worker_count, examples):
  """Bad arguments end here, in one sentence each, before any work."""
  if objective.examples is None and examples is None:
    raise ValueError(f"objective={objective.name!r} builds no examples from documents; pass "
                     "its task's row builder, or choose one of " + ", ".join(OBJECTIVES) + ".")
  if len(source) == 0:
    raise ValueError("The data source has no documents; check data.train_path/data.eval_path.")
  if seq_len < 2 or batch_size < 1:
    raise ValueError(f"seq_len ({seq_len}) must be >= 2 and batch_size ({batch_size}) >= 1.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0; got {worker_count}.")


def build_dataset(source, tokenizer, objective: str | Objective, *, seq_len: int, batch_size: int,
                  seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0,
                  process_count: int = 1, worker_count: int = 0, read_threads: int = 2,
                  shuffle_window: int = 1024, pad_last_batch: bool = False, examples=None,
                  **options) -> grain.IterDataset:
  """The pipeline as a Grain IterDataset (``make_pipeline`` iterates it).

  ``examples``: a fine-tuning row builder, ``(record, index) -> [row, ...]``
  (tasks/examples.py); it replaces the objective's own construction and packing.
  """
  if isinstance(objective, str):
    objective = get_objective(objective)
  _check_args(source, objective, seq_len, batch_size, process_index, process_count,
              worker_count, examples)
  builder = examples or _example_builder(objective, tokenizer, seq_len, options)
  ds = grain.MapDataset.range(len(source))
  if shuffle:
    ds = ds.shuffle(seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(_Tag())
  ds = ds[process_index::process_count]
  ds = ds.map(_BuildExamples(source, tokenizer, builder, seed, examples))
  # An element is a whole document's examples, so keep the read-ahead buffer short.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=max(2 * read_threads, 1)))
  ds = grain.experimental.FlatMapIterDataset(ds, _Unlist())
  # Its own seed: the document shuffle already uses seed + epoch with the same permutation code.
  window_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])

  def mix(stream):
    """Shuffles within a window of neighbouring examples or rows (when shuffling)."""
    if not shuffle or shuffle_window <= 1:
      return stream
    return grain.experimental.WindowShuffleIterDataset(stream, window_size=shuffle_window,
                                                       seed=window_seed)

  # Fine-tuning rows are one record each (padded), never packed.
  ds = mix(ds) if examples is not None else builder.pack(ds, batch_size, mix)
  if pad_last_batch:
    # Zero rows: segment ids, loss masks, MLM and NSP weights are 0, so they weigh nothing.
    ds = ds.batch(batch_size, batch_fn=functools.partial(grain.experimental.batch_and_pad,
                                                         batch_size=batch_size))
  else:
    ds = ds.batch(batch_size, drop_remainder=True)
  if worker_count > 0:
    # Grain's workers read absl flags; outside an absl app (tests, notebooks) use the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=2))
  return ds


def make_pipeline(source, tokenizer, objective: str | Objective, *, seq_len: int,
                  batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                  examples=None, **options) -> grain.DatasetIterator:
  """Training batches of ``objective`` from this process's share of ``source`` (checkpointable).

  Repeats forever unless ``num_epochs`` is set; ``get_state``/``set_state`` save and restore
  the position. ``source``: random access (``len``, ``[i]`` -> ``{'text': str}``).
  ``batch_size`` is per process. ``options``: ``read_threads``, ``shuffle_window`` and the
  objective's own (mlm_nsp: short_seq_prob, masked_lm_prob, max_predictions_per_seq,
  whole_word_mask; span_corruption: noise_density, mean_noise_span_length).
  """
  return iter(build_dataset(
      source, tokenizer, objective, seq_len=seq_len, batch_size=batch_size, seed=seed,
      shuffle=shuffle, num_epochs=num_epochs, process_index=process_index,
      process_count=process_count, worker_count=worker_count, examples=examples, **options))


def make_eval_pipeline(source, tokenizer, objective: str | Objective, *, seq_len: int,
                       batch_size: int, seed: int = 0, process_index: int = 0,
                       process_count: int = 1,
                       worker_count: int = 0, examples=None, **options) -> grain.DatasetIterator:
  """One ordered pass over this process's share of ``source`` with fixed masks, padded at the end.

  The last batch is filled with all-zero rows (weight 0 everywhere) so no example is lost.
  """
  return iter(build_dataset(
      source, tokenizer, objective, seq_len=seq_len, batch_size=batch_size, seed=seed,
      shuffle=False, num_epochs=1, process_index=process_index, process_count=process_count,
      worker_count=worker_count, pad_last_batch=True, examples=examples, **options))
