"""The benchmark on a tiny model: the FLOPs it divides by, counted by hand, and a timing that
leaves the compile out."""

import json
import statistics

import jax
import pytest

from configs import gpt_tiny
from lm_research import bench

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow


def test_bench_tiny_fields_and_throughput():
  """FLOPs per token by hand for the 1-layer model; the median step excludes compilation."""
  c = gpt_tiny.get_config()
  c.model.d_model, c.model.num_layers, c.model.num_heads = 32, 1, 2
  c.model.d_ff, c.model.vocab_size = 64, 64
  batch, seq = 2, 16
  r = bench.run_bench(c, batch_size=batch, seq_len=seq, steps=2, matmul_size=128,
                      devices=jax.devices()[:1])
  for key in ("tokens_per_sec", "step_time_s", "compile_time_s", "mfu", "mfu_vs_matmul",
              "peak_memory_bytes", "batch_size", "seq_len", "flops_per_token"):
    assert r[key] > 0, key
  assert r["batch_size"] == batch and r["seq_len"] == seq
  # q, k, v, out 4 * 32 * 32, MLP 2 * 32 * 64, tied head 32 * 64 = 10,240 matmul weights:
  # 2 FLOPs each per token, plus causal attention 2 T^2 (N H) per example; training is 3 x.
  forward = 2 * 10240 * seq + 2 * seq * seq * 32
  assert r["flops_per_token"] == 3 * forward / seq == 64512
  assert len(r["step_times_s"]) == 2
  assert r["step_time_s"] == statistics.median(r["step_times_s"])
  assert r["compile_time_s"] > 10 * r["step_time_s"]  # the compile is timed apart from steps
  json.loads(json.dumps(r))  # the last line of the CLI is this dict as JSON
  assert "tokens/s" in bench.format_table(r)
