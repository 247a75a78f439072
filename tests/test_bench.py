"""The benchmark on a tiny model: every JSON field present and positive, tokens/s consistent."""

import json

import jax

from configs import gpt_tiny
from lm_research import bench


def test_bench_tiny_fields_and_throughput():
  """tokens_per_sec x step_time_s is the number of tokens in one step."""
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
  assert abs(r["tokens_per_sec"] * r["step_time_s"] - batch * seq) < 1e-6 * batch * seq
  json.loads(json.dumps(r))  # the last line of the CLI is this dict as JSON
  assert "tokens/s" in bench.format_table(r)
