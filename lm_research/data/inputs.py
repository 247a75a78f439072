"""The trainer's view of data: config.data -> tokenizer + this process's batch iterators.

``data.source='synthetic'`` gives seeded random batches (tests, benchmarks); anything else
opens the TFDS source (local files or a catalog name), gets or trains the tokenizer, and runs
the Grain pipeline of the config's objective.
"""

from __future__ import annotations

import os
from typing import Iterator

import jax
from absl import logging
import numpy as np

from lm_research import hosts
from lm_research.data.synthetic import SyntheticSource, synthetic_batch
from lm_research.objectives.registry import get_objective

EVAL_SEED_OFFSET = 1_000_003  # eval data never shares randomness with training data
_TEXTS_FOR_TOKENIZER = 200_000  # records read to train a tokenizer (bounded: big corpora)


class DataSources:
  """Each split of ``config.data``, opened once per run: opening local files fingerprints them,
  and set-up, tokenizer training, batches and evaluation all read the same splits."""

  def __init__(self, data_cfg, workdir: str):
    self.data_cfg = data_cfg
    self.workdir = workdir
    self._opened: dict = {}

  def __call__(self, split: str):
    """The 'train' or 'eval' source (sources.open_source), opened on first use."""
    if split not in self._opened:
      from lm_research.data import sources  # noqa: PLC0415  (TFDS only when needed)
      self._opened[split] = sources.open_source(self.data_cfg, split, self.workdir)
    return self._opened[split]

  def rows(self, split: str, builder, seq_len: int, buckets: int, multiple: int,
           pack: bool = False):
    """The split's fine-tuning rows at ``seq_len`` (length_buckets.PreparedRows; ``pack``:
    several examples a row, data/example_packing.py), built on first use: every evaluation
    during training reuses them."""
    key = ("rows", split, seq_len, pack)
    if key not in self._opened:
      from lm_research.data import example_packing, length_buckets  # noqa: PLC0415
      rows = length_buckets.PreparedRows.build(self(split), builder, split, buckets, multiple)
      if pack:
        examples = len(rows)
        rows = example_packing.pack(rows, buckets, multiple)
        logging.info("data.pack_examples: %d %s rows hold %d examples (%.2f a row)", len(rows),
                     split, examples, examples / len(rows))
      self._opened[key] = rows
    return self._opened[key]


def get_tokenizer(config, family: str, workdir: str, open_split: DataSources | None = None):
  """The configured tokenizer, trained on process 0 on first use and then read by all."""
  from lm_research.data import sources, tokenizer_training  # noqa: PLC0415  (TFDS when needed)
  data = config.data
  open_split = open_split or DataSources(data, workdir)

  def texts():
    return sources.iter_texts(open_split("train"), limit=_TEXTS_FOR_TOKENIZER)

  args = (data.tokenizer_path, texts, family, config.model.vocab_size, data.tokenizer_type,
          data.character_coverage, workdir)
  if jax.process_count() > 1:  # opening is collective (sources.open_source), so not in
    open_split("train")         # process 0's turn below, where texts() reads the split
  tok = hosts.process_0_first("train or load the tokenizer",
                              lambda: tokenizer_training.get_or_train_tokenizer(*args))
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(
        f"The tokenizer has {tok.vocab_size} ids but model.vocab_size={config.model.vocab_size}; "
        "use a tokenizer that matches the model, or raise model.vocab_size.")
  return tok


def _pipeline_options(config) -> dict:
  """The objective's options (e.g. mlm_nsp's masked_lm_prob) as config.data sets them."""
  return {n: config.data[n] for n in get_objective(config.objective).options if n in config.data}


def num_data_shards(config, num_documents: int) -> int:
  """How many disjoint data streams make up a global batch (``data.num_shards``, 0 = auto).

  The global batch is the same whatever the process count that divides this number, so a
  2-process run sees exactly the batches of a 1-process run. Auto: the largest divisor of the
  batch that is at most 8 and at most the number of training documents, and a multiple of
  the process count.
  """
  batch, processes = config.train.batch_size, jax.process_count()
  shards = config.data.num_shards
  if not shards:
    fitting = [d for d in range(1, 9) if batch % d == 0 and d % processes == 0
               and d <= num_documents]
    shards = max(fitting) if fitting else processes
  if shards > num_documents:
    raise ValueError(
        f"The training data has {num_documents} documents, fewer than the {shards} data shards "
        "(one per process at least); add documents (e.g. split the text into files) or lower "
        "data.num_shards / the process count.")
  if batch % shards or shards % processes:
    raise ValueError(
        f"data.num_shards={shards} must divide train.batch_size={batch} and be a multiple of "
        f"the {processes} processes; set --config.data.num_shards accordingly.")
  return int(shards)


class ShardedBatches:
  """This process's rows of each global batch: its shards' batches, concatenated in order.

  Shard s reads documents s, s+S, s+2S, ... of the shuffled order, so processes read
  disjoint parts of the data that together cover all of it.
  """

  def __init__(self, make_shard, shards: range, *, finite: bool):
    self.iterators = [make_shard(s) for s in shards]
    self.finite = finite
    self.template = None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(it, None) for it in self.iterators]
    if all(p is None for p in parts):
      raise StopIteration
    if any(p is None for p in parts):
      if not self.finite:
        raise RuntimeError("A training data shard ended; training data repeats forever.")
      template = next(p for p in parts if p is not None)
      parts = [p if p is not None else {k: np.zeros_like(v) for k, v in template.items()}
               for p in parts]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    """Every shard's position (JSON), for checkpoints."""
    return {"shards": [it.get_state() for it in self.iterators]}

  def set_state(self, state: dict) -> None:
    """Continues every shard from a ``get_state`` result."""
    if "shards" not in state:
      raise ValueError("The checkpoint's data position is from length-bucketed batches; resume "
                       "with --config.data.length_buckets > 0, or start a new workdir.")
    if len(state["shards"]) != len(self.iterators):
      raise ValueError(f"The checkpoint's data state has {len(state['shards'])} shards, this "
                       f"process has {len(self.iterators)}; keep data.num_shards and the "
                       "process count of the saved run, or restart the data (new workdir).")
    for it, shard_state in zip(self.iterators, state["shards"]):
      it.set_state(shard_state)


def worker_count(config, shards_per_process: int) -> int:
  """``data.worker_count``; -1 (auto): none on CPU, where the model needs the cores; else one
  Grain worker process per 4 host cores, at most 16 a process, shared by its data shards."""
  if config.data.worker_count >= 0:
    return config.data.worker_count
  if jax.default_backend() == "cpu":
    return 0
  return max(1, min(16, (os.cpu_count() or 1) // 4) // shards_per_process)


def make_batches(config, family: str, split: str, workdir: str, tokenizer=None,
                 examples=None, open_split: DataSources | None = None) -> Iterator[dict]:
  """This process's host batches: 'train' endless and checkpointable, 'eval' one fixed pass.

  ``examples``: a fine-tuning row builder (tasks/examples.py) instead of the objective's;
  ``open_split``: the run's opened sources (opened here when not given).
  """
  process_index, process_count = jax.process_index(), jax.process_count()
  seed = config.seed if split == "train" else config.seed + EVAL_SEED_OFFSET
  if examples is not None and config.data.length_buckets:
    return _bucketed_batches(config, split, examples, open_split or DataSources(config.data,
                                                                              workdir), seed)
  if config.data.source == "synthetic":
    return SyntheticSource(get_objective(config.objective), seed=seed,
                           batch_size=config.train.batch_size, seq_len=config.train.seq_len,
                           vocab_size=config.model.vocab_size, process_index=process_index,
                           process_count=process_count, data_cfg=config.data)
  from lm_research.data import pipeline  # noqa: PLC0415
  open_split = open_split or DataSources(config.data, workdir)
  source = open_split(split)
  num_train_documents = len(open_split("train"))
  if tokenizer is None:
    tokenizer = get_tokenizer(config, family, workdir, open_split)
  num_shards = num_data_shards(config, num_train_documents)
  per_process = num_shards // process_count
  make = pipeline.make_pipeline if split == "train" else pipeline.make_eval_pipeline

  def make_shard(shard: int):
    return make(source, tokenizer, config.objective, seq_len=config.train.seq_len,
                batch_size=config.train.batch_size // num_shards, seed=seed,
                process_index=shard, process_count=num_shards,
                worker_count=worker_count(config, per_process), examples=examples,
                **_pipeline_options(config))

  shards = range(process_index * per_process, (process_index + 1) * per_process)
  return ShardedBatches(make_shard, shards, finite=split != "train")


def bucket_multiple(config) -> int:
  """What bucket lengths are rounded up to: the Pallas kernels' tile when they run, else 8."""
  from lm_research.models import ModelConfig, pallas_attention  # noqa: PLC0415
  impl = ModelConfig.from_dict(config.model).resolved().attention_impl
  return pallas_attention.BLOCK if impl in ("splash", "flash") else 8


def _bucketed_batches(config, split: str, examples, open_split: DataSources, seed: int):
  """Fine-tuning batches grouped by length (data/length_buckets.py)."""
  from lm_research.data import length_buckets  # noqa: PLC0415
  rows = open_split.rows(split, examples, config.train.seq_len, config.data.length_buckets,
                         bucket_multiple(config), config.data.pack_examples and split == "train")
  return length_buckets.BucketedBatches(
      rows, batch_size=config.train.batch_size, seed=seed, shuffle=split == "train",
      finite=split != "train", process_index=jax.process_index(),
      process_count=jax.process_count(),
      max_batches=config.eval.steps if split != "train" else 0)


def eval_batches(config, batches: Iterator[dict], num_batches: int) -> Iterator[dict]:
  """Exactly ``num_batches`` batches; once the data runs out, all-zero (weightless) batches.

  Every process must run the same number of eval steps, even when its share is shorter or
  empty; a synthetic batch gives the shapes of the zeros.
  """
  for _ in range(num_batches):
    batch = next(batches, None)
    if batch is None:
      shapes = synthetic_batch(get_objective(config.objective), step=0, seed=0,
                               batch_size=config.train.batch_size // jax.process_count(),
                               seq_len=config.train.seq_len, vocab_size=config.model.vocab_size,
                               data_cfg=config.data)
      batch = {k: np.zeros_like(v) for k, v in shapes.items()}
    yield batch
