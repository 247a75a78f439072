"""Throughput of the input pipeline alone (no model): examples/s and tokens/s per objective
and Grain worker count.

  python -m lm_research.data.pipeline_bench --config=configs/bert_tiny.py [--batches=50] \
      [--worker_count=0,1,2,4] [--objectives=causal_lm,mlm_nsp,span_corruption]

Several worker counts print one line each and the speed-up over the first, which is how to
choose ``data.worker_count`` for a host (the machine's cores are shared with the model's host
work and, on CPU, with the model itself).

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
_WORKERS = flags.DEFINE_list("worker_count", ["0"], "Grain worker processes, one run each")
_THREADS = flags.DEFINE_integer("read_threads", 2, "threads reading and tokenizing documents")
_OBJECTIVES = flags.DEFINE_list("objectives", list(pipeline.OBJECTIVES), "objectives to time")

BUNDLED_CORPUS = "data/shakespeare/train"


def open_corpus(config, workdir: str):
  """The config's training source, or the bundled corpus when the config has no real data."""
  from lm_research.data import sources  # noqa: PLC0415  (TFDS only here, not in the pipeline)
  data = config.data.to_dict()
  if data.get("source", "synthetic") == "synthetic":
    data.update(source="files", kind="text", train_path=BUNDLED_CORPUS, eval_path="")
  return sources.open_source(data, "train", workdir), data


def tokenizer_for(objective: str, config, data: dict, source, workdir: str):
  """A tokenizer of the family ``objective`` trains, trained on the corpus on first use."""
  from lm_research.data import tokenizer_training  # noqa: PLC0415  (only when timing)
  family = get_objective(objective).families[0]
  return tokenizer_training.get_or_train_tokenizer(
      data.get("tokenizer_path", ""),
      lambda: (source[i]["text"] for i in range(len(source))), family,
      config.model.vocab_size, data.get("tokenizer_type", "unigram"),
      data.get("character_coverage", 0.9995), workdir=os.path.join(workdir, family))


def bench(source, tokenizer, objective: str, *, seq_len: int, batch_size: int, batches: int,
          worker_count: int = 0, read_threads: int = 2) -> dict[str, float]:
  """Times ``batches`` batches from a fresh iterator, start-up (shuffle-window fill, worker
  processes) included, and the rate after the first batch (``steady_examples_per_s``).

  Use several times the shuffle window (1024 examples) or the figure flatters: batches after
  the first come out of an already filled window.
  """
  start = time.perf_counter()
  it = pipeline.make_pipeline(source, tokenizer, objective, seq_len=seq_len,
                              batch_size=batch_size, seed=0, worker_count=worker_count,
                              read_threads=read_threads)
  rows = tokens = encoder_tokens = first_rows = 0
  first = None
  count_tokens = get_objective(objective).tokens  # real (non-padding) tokens the model reads
  for _ in range(batches):
    batch = next(it)
    rows += len(next(iter(batch.values())))
    if first is None:
      first, first_rows = time.perf_counter() - start, rows
    tokens += int(count_tokens(batch))
    # Padding shows as 0 in the attention mask (unpacked rows) or the segment ids (packed).
    occupied = batch["attention_mask"] if "attention_mask" in batch else batch["segment_ids"]
    encoder_tokens += int(occupied.astype(bool).sum())
  elapsed = time.perf_counter() - start
  if worker_count:
    it.close()
  return {"first_batch_s": first, "examples_per_s": rows / elapsed,
          "steady_examples_per_s": (rows - first_rows) / max(elapsed - first, 1e-9),
          "tokens_per_s": tokens / elapsed, "fill": encoder_tokens / rows / seq_len}


def main(argv: Sequence[str]) -> None:
  """Prints one line per objective."""
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  source, data = open_corpus(config, workdir)
  workers = [int(w) for w in _WORKERS.value]
  print(f"corpus: {data.get('train_path') or data.get('source')} ({len(source)} documents); "
        f"seq_len={config.train.seq_len}, batch_size={config.train.batch_size}, "
        f"read_threads={_THREADS.value}, {os.cpu_count()} CPUs")
  for objective in _OBJECTIVES.value:
    tok = tokenizer_for(objective, config, data, source, workdir)
    base = None
    for count in workers:
      r = bench(source, tok, objective, seq_len=config.train.seq_len,
                batch_size=config.train.batch_size, batches=_BATCHES.value,
                worker_count=count, read_threads=_THREADS.value)
      base = base or r["steady_examples_per_s"]
      print(f"{objective:16s} workers={count:<3d} {r['examples_per_s']:7.0f} examples/s, "
            f"{r['steady_examples_per_s']:7.0f} after the first batch "
            f"(x{r['steady_examples_per_s'] / base:.2f}), {r['tokens_per_s']:8.0f} tokens/s "
            f"(first batch {r['first_batch_s']:.1f}s, non-padding "
            f"{np.round(100 * r['fill'], 1)}% of the (encoder) rows)")


if __name__ == "__main__":
  app.run(main)
