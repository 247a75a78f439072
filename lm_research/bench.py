"""Training-step benchmark: compile time, step time, tokens/s, model FLOPs, MFU, peak memory.

  python -m lm_research.bench --config=configs/gpt2_small.py --batch_size=4 --seq_len=512 \
      --steps=5 [--remat=none|full|save_dots] [--config.KEY=VALUE ...]

Builds the step exactly as training does (``lm_research.experiment``) on synthetic data, so no
dataset or tokenizer is needed. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections

from lm_research import experiment, hugepages, metrics, sharding
from lm_research.data import inputs
from lm_research.optim import make_optimizer


def _peak_memory(compiled: Any) -> tuple[int, str]:
  """Peak bytes: the allocator's own count, else XLA's plan for the step, else process RSS."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001  (CPU backends may not implement it)
    stats = {}
  if stats.get("peak_bytes_in_use"):
    return int(stats["peak_bytes_in_use"]), "device allocator"
  try:
    mem = compiled.memory_analysis()
    total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
             - getattr(mem, "alias_size_in_bytes", 0))  # donated state is counted once
    if total > 0:
      return int(total), "XLA memory_analysis"
  except Exception:  # noqa: BLE001  (not every backend analyses memory; the label says which
    pass             # figure was used, so falling through to RSS hides nothing)
  # ru_maxrss is KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def run_bench(config: ml_collections.ConfigDict, *, batch_size: int, seq_len: int,
              steps: int = 5, warmup: int = 1, remat: str | None = None,
              matmul_size: int = 1024, devices: list | None = None,
              hlo_path: str = "") -> dict[str, Any]:
  """Compiles and times the train step of ``config`` at this shape; returns the results.

  ``hlo_path``: also write the compiled step's HLO text there (bench/gpu.sh looks in it for
  the fused attention kernel).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # never mutate the caller's config
  config.data.source = "synthetic"
  config.train.batch_size = batch_size
  config.train.seq_len = seq_len
  config.eval.every_steps = 0
  if remat is not None:
    config.model.remat = remat
  exp = experiment.make_experiment(config, devices or jax.devices())
  tx, schedule = make_optimizer(exp.optim_cfg)
  # Best of many, before and after the steps: on a shared CPU a slowdown can last a while, and
  # only ever lowers the figure (which would raise the MFU).
  matmul_before = metrics.measured_matmul_flops(size=matmul_size, repeats=20)
  with sharding.active_mesh(exp.mesh):
    graphdef, state, state_sh = experiment.create_train_state(exp, tx)
    train, _ = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
    batches = inputs.make_batches(config, exp.model_cfg.family, "train", "", None)
    batch = sharding.global_batch(exp.mesh, next(batches))
    jax.block_until_ready((state, batch))
    start = time.perf_counter()
    compiled = train.lower(state, batch).compile()
    compile_time = time.perf_counter() - start
    if hlo_path:
      with open(hlo_path, "w") as f:
        f.write(compiled.as_text())
    # Warm-up runs the same batch: synthetic data makes every batch cost the same.
    for _ in range(warmup):
      state, out = compiled(state, batch)
      jax.block_until_ready((state, out))
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, out = compiled(state, batch)
      jax.block_until_ready((state, out))
      times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  tokens_per_step = batch_size * (seq_len + exp.target_len)
  flops_per_example = exp.train_flops_per_example()
  n_devices = exp.mesh.size
  achieved = flops_per_example * batch_size / step_time / n_devices  # per device
  # MFU against the peak of the dtype the model computes in (bf16 on GPU/TPU by default).
  model_cfg = exp.model_cfg.resolved()
  peak_table = metrics.table_peak_flops(jax.devices()[0], model_cfg.dtype,
                                        model_cfg.matmul_precision)
  matmul = max(matmul_before, metrics.measured_matmul_flops(size=matmul_size, repeats=20))
  peak_bytes, peak_source = _peak_memory(compiled)
  return {
      "config": config.model.family + ":" + config.objective,
      "batch_size": batch_size, "seq_len": seq_len, "remat": config.model.remat,
      "dtype": model_cfg.dtype, "attention_impl": model_cfg.attention_impl,
      "dropout_impl": model_cfg.dropout_impl, "dropout_rate": model_cfg.dropout_rate,
      "devices": n_devices, "device_kind": jax.devices()[0].device_kind,
      "compile_time_s": compile_time, "step_time_s": step_time,
      "step_times_s": times, "tokens_per_sec": tokens_per_step / step_time,
      "flops_per_token": flops_per_example / (seq_len + exp.target_len),
      "achieved_flops_per_device": achieved,
      "peak_flops_table": peak_table,
      "matmul_flops_measured": matmul,
      # With no spec-sheet peak (CPU), MFU is against the measured matmul throughput.
      "mfu": achieved / (peak_table or matmul),
      "mfu_vs_matmul": achieved / matmul,
      "peak_memory_bytes": peak_bytes, "peak_memory_source": peak_source,
      "hugepage_malloc": hugepages.active(),
      "loss": float(out["loss"]) if "loss" in out else None,
  }


def format_table(r: dict[str, Any]) -> str:
  """The results as an aligned two-column table."""
  rows = [
      ("config", r["config"]), ("device", f"{r['devices']} x {r['device_kind']}"),
      ("batch x seq", f"{r['batch_size']} x {r['seq_len']}"), ("remat", r["remat"]),
      ("dtype / attention / dropout",
       f"{r['dtype']} / {r['attention_impl']} / {r['dropout_impl']} ({r['dropout_rate']})"),
      ("compile time", f"{r['compile_time_s']:.2f} s"),
      ("step time (median)", f"{r['step_time_s'] * 1e3:.1f} ms"),
      ("tokens/s", f"{r['tokens_per_sec']:,.0f}"),
      ("model FLOPs/token", f"{r['flops_per_token'] / 1e9:.3f} GFLOP"),
      ("achieved", f"{r['achieved_flops_per_device'] / 1e9:.1f} GFLOP/s per device"),
      ("peak (spec sheet, dtype)", "unknown" if r["peak_flops_table"] is None
       else f"{r['peak_flops_table'] / 1e12:.0f} TFLOP/s"),
      ("measured f32 matmul", f"{r['matmul_flops_measured'] / 1e9:.1f} GFLOP/s"),
      ("MFU", f"{100 * r['mfu']:.1f}%"),
      ("MFU vs measured matmul", f"{100 * r['mfu_vs_matmul']:.1f}%"),
      ("peak memory", f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_source']})"),
      ("huge-page malloc", "on" if r["hugepage_malloc"] else "off"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str]) -> None:
  """Runs the benchmark from the flags and prints the table and the JSON line."""
  del argv
  result = run_bench(_CONFIG.value, batch_size=_BATCH.value, seq_len=_SEQ.value,
                     steps=_STEPS.value, warmup=_WARMUP.value, remat=_REMAT.value,
                     hlo_path=_HLO.value)
  result["config"] = config_path_flag() or result["config"]
  emit(result, format_table(result))


def emit(result: dict, table: str) -> None:
  """Prints the table, then the result as one JSON object on the last line."""
  print(table)
  sys.stdout.flush()
  print(json.dumps(result))


def config_path_flag(default: str = "") -> str:
  """The --config file name as given (without overrides), for the JSON line."""
  for arg in sys.argv[1:]:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return default


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
  _BATCH = flags.DEFINE_integer("batch_size", 8, "global batch size")
  _SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per example")
  _STEPS = flags.DEFINE_integer("steps", 5, "timed steps (median reported)")
  _WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compiling")
  _REMAT = flags.DEFINE_enum("remat", None, ["none", "full", "save_dots"],
                             "override model.remat")
  _HLO = flags.DEFINE_string("hlo_out", "", "write the compiled train step's HLO text here")
  flags.mark_flag_as_required("config")
  hugepages.reexec_with_hugepages()
  app.run(main)
