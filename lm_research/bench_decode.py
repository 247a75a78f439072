"""Decoding benchmark: generated tokens/s with the KV cache and with full recompute.

  python -m lm_research.bench_decode [--config=configs/gpt_tiny.py] [--batch_size=1 \
      --prompt_len=16 --max_new_tokens=256 --repeats=3 --strategy=greedy] [--config.KEY=VALUE]

Builds the config's model with random weights and random prompts (no checkpoint, no data),
compiles ``decoding.generate`` ahead of time for ``use_cache`` True and False, then times the
best of ``repeats`` runs of each. EOS is disabled, so every run generates exactly
``max_new_tokens`` per row. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from lm_research import bench, decoding
from lm_research.models import ModelConfig, build_model


def _time_generate(model, ids, mask, cfg: decoding.DecodeConfig, repeats: int) -> dict[str, Any]:
  """Compile time, best wall time of ``repeats`` runs, and the tokens of the last run."""
  fn, args = decoding.prepare(model, ids, mask, cfg, jax.random.key(0))  # used if sampling
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_time = time.perf_counter() - start
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {"compile_time_s": compile_time, "times_s": times, "best_s": min(times),
          "tokens": np.asarray(out.tokens)}


def run_decode_bench(config: ml_collections.ConfigDict, *, batch_size: int, prompt_len: int,
                     max_new_tokens: int, repeats: int = 3, strategy: str = "greedy",
                     num_beams: int = 4, seed: int = 0) -> dict[str, Any]:
  """Times generate with and without the KV cache on ``config``'s model; returns the results."""
  model_cfg = ModelConfig.from_dict(config.model)
  grown = False
  if model_cfg.position == "learned" and prompt_len + max_new_tokens > model_cfg.max_len:
    # Random weights: a longer position table changes nothing else, and it lets the default
    # command (prompt 16 + 256 new tokens) run on configs with a 256-entry table.
    model_cfg = model_cfg.replace(max_len=prompt_len + max_new_tokens)
    grown = True
  model = build_model(model_cfg, seed)
  ids = np.random.RandomState(seed).randint(2, model_cfg.vocab_size, (batch_size, prompt_len))
  mask = np.ones_like(ids)
  runs = {}
  for use_cache in (True, False):
    cfg = decoding.DecodeConfig(max_new_tokens=max_new_tokens, strategy=strategy,
                                num_beams=num_beams, eos_id=-1, use_cache=use_cache)
    runs[use_cache] = _time_generate(model, ids, mask, cfg, repeats)
  new_tokens = batch_size * max_new_tokens
  cache, full = runs[True], runs[False]
  return {
      "family": model_cfg.family, "strategy": strategy, "batch_size": batch_size,
      "prompt_len": prompt_len, "max_new_tokens": max_new_tokens, "new_tokens": new_tokens,
      "repeats": repeats, "scan_layers": model_cfg.scan_layers,
      "max_len": model_cfg.max_len, "max_len_grown": grown,
      "device_kind": jax.devices()[0].device_kind,
      "tokens_per_sec_cache": new_tokens / cache["best_s"],
      "tokens_per_sec_no_cache": new_tokens / full["best_s"],
      "speedup": full["best_s"] / cache["best_s"],
      "compile_time_s_cache": cache["compile_time_s"],
      "compile_time_s_no_cache": full["compile_time_s"],
      "time_s_cache": cache["times_s"], "time_s_no_cache": full["times_s"],
      # Same greedy tokens both ways (up to float ties): the cache changes speed, not results.
      "tokens_match": bool(np.array_equal(cache["tokens"], full["tokens"])),
  }


def format_table(r: dict[str, Any]) -> str:
  """The results as a small aligned table, one row per path."""
  lines = [
      f"{r['family']} {r['strategy']}, batch {r['batch_size']}, prompt {r['prompt_len']}, "
      f"{r['max_new_tokens']} new tokens, best of {r['repeats']}, {r['device_kind']}"
      + (f" (position table grown to {r['max_len']})" if r["max_len_grown"] else ""),
      f"{'path':<12}{'compile s':>11}{'best s':>10}{'tokens/s':>12}",
  ]
  for name, key in (("kv cache", "cache"), ("no cache", "no_cache")):
    lines.append(f"{name:<12}{r['compile_time_s_' + key]:>11.2f}"
                 f"{min(r['time_s_' + key]):>10.3f}{r['tokens_per_sec_' + key]:>12,.1f}")
  lines.append(f"speedup {r['speedup']:.1f}x; same tokens both ways: {r['tokens_match']}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  """Runs the benchmark from the flags and prints the table and the JSON line."""
  del argv
  result = run_decode_bench(
      _CONFIG.value, batch_size=_BATCH.value, prompt_len=_PROMPT.value,
      max_new_tokens=_NEW.value, repeats=_REPEATS.value, strategy=_STRATEGY.value,
      num_beams=_BEAMS.value)
  result["config"] = bench.config_path_flag(_DEFAULT_CONFIG)
  bench.emit(result, format_table(result))


_DEFAULT_CONFIG = "configs/gpt_tiny.py"

if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "experiment config file")
  _BATCH = flags.DEFINE_integer("batch_size", 1, "prompts decoded together")
  _PROMPT = flags.DEFINE_integer("prompt_len", 16, "tokens per prompt")
  _NEW = flags.DEFINE_integer("max_new_tokens", 256, "tokens generated per prompt")
  _REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per path after compiling (best kept)")
  _STRATEGY = flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample", "beam"],
                                "decoding strategy (sampling draws with a fixed key)")
  _BEAMS = flags.DEFINE_integer("num_beams", 4, "beam width for --strategy=beam")
  from lm_research import hugepages
  hugepages.reexec_with_hugepages()
  app.run(main)
