"""Model FLOPs per example by family, device peak FLOP/s (for the dtype a run computes in),
and MFU.

Training FLOPs = 3 x forward (forward + backward twice as costly); a matmul of an m x k by a
k x n matrix costs 2mkn. Attention scores and the weighted sum cost 4 T S (N H) per layer:
bidirectional attention counts every (query, key) pair, causal self-attention half of them.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lm_research.models.config import ModelConfig

# Dense bf16 (and fp16) peak FLOP/s per chip, from the vendors' spec sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
}
# float32 matmuls on NVIDIA GPUs: TF32 tensor cores at 'default'/'high' precision, the plain
# FP32 units at 'highest' (dense spec-sheet figures, SXM parts).
GPU_TF32_FLOPS = {"A100": 156e12, "H100": 494.5e12, "H200": 494.5e12}
GPU_FP32_FLOPS = {"A100": 19.5e12, "H100": 67e12, "H200": 67e12}
# float32 matmuls on TPUs are bfloat16 passes: 1 at 'default', 3 at 'high', 6 at 'highest'.
TPU_F32_PASSES = {"default": 1, "high": 3, "highest": 6}


def _layer_matmul_params(cfg: ModelConfig, cross: bool) -> int:
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  attention = d * n * h * 2 + d * k * h * 2  # q, out; k, v
  mlp = d * cfg.d_ff * (3 if cfg.gated_mlp else 2)
  return attention * (2 if cross else 1) + mlp


def forward_flops_per_example(cfg: ModelConfig, seq_len: int, target_len: int = 0,
                              mlm_positions: int | None = None) -> float:
  """Forward-pass FLOPs for one example of ``seq_len`` tokens (and ``target_len`` for T5).

  ``mlm_positions``: an encoder's MLM head runs at this many positions (the masked ones)
  instead of all ``seq_len``.
  """
  nh = cfg.num_heads * cfg.dim_per_head
  d, v = cfg.d_model, cfg.vocab_size
  if cfg.family == "encoder":
    per_token = 2 * cfg.num_layers * _layer_matmul_params(cfg, cross=False)
    head = 2 * (d * d + d * v) if cfg.head in ("lm", "pretraining") else 0
    attention = cfg.num_layers * 4 * seq_len * seq_len * nh
    return per_token * seq_len + head * (mlm_positions or seq_len) + attention
  if cfg.family == "decoder":
    per_token = 2 * cfg.num_layers * _layer_matmul_params(cfg, cross=False) + 2 * d * v
    attention = cfg.num_layers * 2 * seq_len * seq_len * nh  # causal: half of 4 T^2 NH
    return per_token * seq_len + attention
  s, t = seq_len, target_len
  encoder = 2 * cfg.num_layers * _layer_matmul_params(cfg, cross=False) * s
  encoder += cfg.num_layers * 4 * s * s * nh
  # Cross-attention keys and values project the s encoder outputs, not the t targets.
  cross_kv = 2 * d * cfg.kv_heads * cfg.dim_per_head
  decoder = (2 * cfg.decoder_layers * (_layer_matmul_params(cfg, cross=True) - cross_kv)
             + 2 * d * v) * t
  decoder += 2 * cfg.decoder_layers * cross_kv * s
  decoder += cfg.decoder_layers * (2 * t * t * nh + 4 * t * s * nh)
  return encoder + decoder


def train_flops_per_example(cfg: ModelConfig, seq_len: int, target_len: int = 0,
                            mlm_positions: int | None = None) -> float:
  """Forward + backward FLOPs for one training example."""
  return 3.0 * forward_flops_per_example(cfg, seq_len, target_len, mlm_positions)


def _lookup(table: dict[str, float], kind: str) -> float | None:
  for name, flops in table.items():
    if name in kind:
      return flops
  return None


def table_peak_flops(device: jax.Device, dtype: str = "bfloat16",
                     precision: str = "default") -> float | None:
  """The spec-sheet peak of a known accelerator for matmuls in ``dtype`` (at ``precision``,
  ModelConfig.matmul_precision, for float32), or None."""
  kind = getattr(device, "device_kind", "")
  peak = _lookup(PEAK_FLOPS, kind)
  if peak is None or dtype != "float32":
    return peak
  if kind.startswith("TPU"):
    return peak / TPU_F32_PASSES[precision]
  return _lookup(GPU_FP32_FLOPS if precision == "highest" else GPU_TF32_FLOPS, kind)


def measured_matmul_flops(size: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of a jitted size x size matmul on the default device, best of ``repeats``."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def peak_flops_per_device(dtype: str = "bfloat16",
                          precision: str = "default") -> tuple[float, str]:
  """Peak FLOP/s of one local device for ``dtype`` matmuls: from the table, else measured once;
  and its source."""
  device = jax.local_devices()[0]
  peak = table_peak_flops(device, dtype, precision)
  if peak is not None:
    return peak, f"spec sheet, {dtype}"
  return measured_matmul_flops(), "measured f32 matmul"
