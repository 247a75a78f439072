"""Throughput of the input pipeline alone (no model): examples/s and tokens/s per objective.

  python -m lm_research.data.pipeline_bench --config=configs/bert_tiny.py [--batches=50] \
      [--worker_count=0] [--objectives=causal_lm,mlm_nsp,span_corruption]

Reads the config's training data (the bundled ``data/shakespeare/train`` when the config says
'synthetic'), with seq_len and the per-process batch size of ``config.train``, and a tokenizer
of the family each objective needs, trained once into ``--workdir`` and reused after that.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from lm_research.data import pipeline
from lm_research.objectives.registry import get_objective

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bert_tiny.py", "experiment config")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lm_research_pipeline_bench",
                               "where prepared data and trained tokenizers are kept")
_BATCHES = flags.DEFINE_integer("batches", 200, "batches timed per objective")
_WORKERS = flags.DEFINE_integer("worker_count", 0, "Grain worker processes")
_THREADS = flags.DEFINE_integer("read_threads", 2, "threads reading and tokenizing documents")
_OBJECTIVES = flags.DEFINE_list("objectives", list(pipeline.OBJECTIVES), "objectives to time")

BUNDLED_CORPUS = "data/shakespeare/train"


def open_corpus(config, workdir: str):
  """The config's training source, or the bundled corpus when the config has no real data."""
  from lm_research.data import sources  # TFDS is only needed here, not by the pipeline
  data = config.data.to_dict()
  if data.get("source", "synthetic") == "synthetic":
    data.update(source="files", kind="text", train_path=BUNDLED_CORPUS, eval_path="")
  return sources.open_source(data, "train", workdir), data


def tokenizer_for(objective: str, config, data: dict, source, workdir: str):
  """A tokenizer of the family ``objective`` trains, trained on the corpus on first use."""
  from lm_research.data import tokenizer_training
  family = get_objective(objective).families[0]
  return tokenizer_training.get_or_train_tokenizer(
      data.get("tokenizer_path", ""),
      lambda: (source[i]["text"] for i in range(len(source))), family,
      config.model.vocab_size, data.get("tokenizer_type", "unigram"),
      data.get("character_coverage", 0.9995), workdir=os.path.join(workdir, family))


def bench(source, tokenizer, objective: str, *, seq_len: int, batch_size: int, batches: int,
          worker_count: int = 0, read_threads: int = 2) -> dict[str, float]:
  """Times ``batches`` batches from a fresh iterator, start-up (shuffle-window fill) included.

  Use several times the shuffle window (1024 examples) or the figure flatters: batches after
  the first come out of an already filled window.
  """
  start = time.perf_counter()
  it = pipeline.make_pipeline(source, tokenizer, objective, seq_len=seq_len,
                              batch_size=batch_size, seed=0, worker_count=worker_count,
                              read_threads=read_threads)
  rows = tokens = encoder_tokens = 0
  first = None
  count_tokens = get_objective(objective).tokens  # real (non-padding) tokens the model reads
  for _ in range(batches):
    batch = next(it)
    first = first or time.perf_counter() - start
    rows += len(next(iter(batch.values())))
    tokens += int(count_tokens(batch))
    # Padding shows as 0 in the attention mask (unpacked rows) or the segment ids (packed).
    occupied = batch["attention_mask"] if "attention_mask" in batch else batch["segment_ids"]
    encoder_tokens += int(occupied.astype(bool).sum())
  elapsed = time.perf_counter() - start
  if worker_count:
    it.close()
  return {"first_batch_s": first, "examples_per_s": rows / elapsed,
          "tokens_per_s": tokens / elapsed, "fill": encoder_tokens / rows / seq_len}


def main(argv: Sequence[str]) -> None:
  """Prints one line per objective."""
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  source, data = open_corpus(config, workdir)
  print(f"corpus: {data.get('train_path') or data.get('source')} ({len(source)} documents); "
        f"seq_len={config.train.seq_len}, batch_size={config.train.batch_size}, "
        f"worker_count={_WORKERS.value}, read_threads={_THREADS.value}")
  for objective in _OBJECTIVES.value:
    tok = tokenizer_for(objective, config, data, source, workdir)
    r = bench(source, tok, objective, seq_len=config.train.seq_len,
              batch_size=config.train.batch_size, batches=_BATCHES.value,
              worker_count=_WORKERS.value, read_threads=_THREADS.value)
    print(f"{objective:16s} {r['examples_per_s']:9.0f} examples/s {r['tokens_per_s']:10.0f} "
          f"tokens/s  (first batch {r['first_batch_s']:.1f}s, "
          f"non-padding {np.round(100 * r['fill'], 1)}% of the (encoder) rows)")


if __name__ == "__main__":
  app.run(main)
