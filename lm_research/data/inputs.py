"""The trainer's view of data: config.data -> tokenizer + this process's batch iterators.

``data.source='synthetic'`` gives seeded random batches (tests, benchmarks); anything else
opens the TFDS source (local files or a catalog name), gets or trains the tokenizer, and runs
the Grain pipeline of the config's objective.
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lm_research.data.synthetic import SyntheticSource

EVAL_SEED_OFFSET = 1_000_003  # eval data never shares randomness with training data
_TEXTS_FOR_TOKENIZER = 200_000  # records read to train a tokenizer (bounded: big corpora)


def get_tokenizer(config, family: str, workdir: str):
  """The configured tokenizer, trained on process 0 on first use and then read by all."""
  from lm_research.data import sources, tokenizer  # noqa: PLC0415  (TFDS only when needed)
  data = config.data

  def texts():
    train = sources.open_source(data, "train", workdir)
    return sources.iter_texts(train, limit=_TEXTS_FOR_TOKENIZER)

  args = (data.tokenizer_path, texts, family, config.model.vocab_size, data.tokenizer_type,
          data.character_coverage, workdir)
  if jax.process_index() != 0:  # process 0 trains (or loads) it first
    multihost_utils.sync_global_devices("tokenizer ready")
  tok = tokenizer.get_or_train_tokenizer(*args)
  if jax.process_count() > 1 and jax.process_index() == 0:
    multihost_utils.sync_global_devices("tokenizer ready")
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(
        f"The tokenizer has {tok.vocab_size} ids but model.vocab_size={config.model.vocab_size}; "
        "use a tokenizer that matches the model, or raise model.vocab_size.")
  return tok


def _pipeline_options(config) -> dict:
  """Objective options present in config.data (e.g. masked_lm_prob), passed to the pipeline."""
  names = ("short_seq_prob", "masked_lm_prob", "max_predictions_per_seq", "whole_word_mask",
           "noise_density", "mean_noise_span_length")
  return {n: config.data[n] for n in names if n in config.data}


def make_batches(config, family: str, split: str, workdir: str, tokenizer=None) -> Iterator[dict]:
  """This process's host batches: 'train' endless and checkpointable, 'eval' one fixed pass."""
  process_index, process_count = jax.process_index(), jax.process_count()
  seed = config.seed if split == "train" else config.seed + EVAL_SEED_OFFSET
  local_batch = config.train.batch_size // process_count
  if config.data.source == "synthetic":
    return SyntheticSource(config.objective, seed=seed, batch_size=config.train.batch_size,
                           seq_len=config.train.seq_len, vocab_size=config.model.vocab_size,
                           process_index=process_index, process_count=process_count)
  from lm_research.data import pipeline, sources  # noqa: PLC0415
  source = sources.open_source(config.data, split, workdir)
  if tokenizer is None:
    tokenizer = get_tokenizer(config, family, workdir)
  common = dict(seq_len=config.train.seq_len, batch_size=local_batch, seed=seed,
                process_index=process_index, process_count=process_count,
                worker_count=config.data.worker_count, **_pipeline_options(config))
  if split == "train":
    return pipeline.make_pipeline(source, tokenizer, config.objective, **common)
  return pipeline.make_eval_pipeline(source, tokenizer, config.objective, **common)


def eval_batches(batches: Iterator[dict], num_batches: int) -> Iterator[dict]:
  """Exactly ``num_batches`` batches; once the data runs out, all-zero (weightless) batches.

  Every process must run the same number of eval steps, even when its shard is shorter.
  """
  template = None
  for _ in range(num_batches):
    batch = next(batches, None)
    if batch is None:
      if template is None:
        logging.warning("No eval data on process %d.", jax.process_index())
        return
      batch = {k: np.zeros_like(v) for k, v in template.items()}
    template = batch
    yield batch
