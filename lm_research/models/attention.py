"""Attention: masks, rotary and relative positions, and the multi-head attention module.

All attention goes through ``dot_product_attention``, which picks the kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lm_research import sharding
from lm_research.models import attention_kernels, pallas_attention
from lm_research.models.attention_kernels import Segments
from lm_research.models.config import ModelConfig
from lm_research.models.layers import dense, normal_init, project
from lm_research.models.softmax_attention import attention_weights, softmax_attention

# The name remat policies use to keep the attention output (models/blocks.py: 'save_dots').
ATTENTION_OUT = "attention_out"


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, *, mask_B1TS=None, bias_BNTS=None,
                          scale: float | None = None, implementation: str = "xla",
                          causal: bool = False, segments: Segments | None = None) -> jax.Array:
  """softmax(q k^T * scale + bias, masked) v.

  ``implementation``: 'xla' (``softmax_attention``: XLA ops with a hand-written backward, any
  device), 'cudnn' (cuDNN flash attention), 'splash' (Pallas splash attention; flash attention
  where there is a bias) or 'flash' (Pallas flash attention). The kernels read ``segments``
  (what ``mask_B1TS`` was built from) instead of the mask; a call a kernel cannot express
  (no segments, e.g. decoding against a cache) runs ``softmax_attention``, with a log note.
  ``causal``: the mask is a causal self-attention one, so work above the diagonal may be skipped.
  """
  if implementation == "cudnn":
    reason = attention_kernels.cudnn_unsupported(q_BTNH, bias_BNTS, segments)
    if not reason:
      return attention_kernels.cudnn_attention(q_BTNH, k_BSKH, v_BSKH, bias_BNTS=bias_BNTS,
                                               scale=scale, segments=segments)
    attention_kernels.note_fallback("cuDNN flash attention", reason)
  elif implementation in ("splash", "flash"):
    reason = ("a dense mask (decoding against a KV cache)" if segments is None
              else pallas_attention.unsupported(q_BTNH, k_BSKH))
    if not reason and bias_BNTS is None and implementation == "splash":
      return pallas_attention.splash_attention(q_BTNH, k_BSKH, v_BSKH, scale=scale,
                                               segments=segments)
    if not reason:
      return pallas_attention.flash_attention(q_BTNH, k_BSKH, v_BSKH, bias_BNTS=bias_BNTS,
                                              scale=scale, segments=segments)
    attention_kernels.note_fallback(f"Pallas {implementation} attention", reason)
  if scale is None:
    scale = 1.0 / math.sqrt(q_BTNH.shape[-1])
  return softmax_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS=mask_B1TS, bias_BNTS=bias_BNTS,
                           scale=scale, causal=causal)


def segments_from_inputs(input_ids_BT, attention_mask_BT=None, segment_ids_BT=None) -> jax.Array:
  """Segment ids (0 = padding, 1.. = documents) from explicit ids, a padding mask, or neither."""
  if segment_ids_BT is not None:
    return jnp.asarray(segment_ids_BT, jnp.int32)
  if attention_mask_BT is not None:
    return jnp.asarray(attention_mask_BT, jnp.int32)
  return jnp.ones(input_ids_BT.shape, jnp.int32)


def positions_from_segments(segment_ids_BT: jax.Array) -> jax.Array:
  """Positions that restart at 0 at the start of each segment (packed documents)."""
  idx_BT = jnp.broadcast_to(jnp.arange(segment_ids_BT.shape[1]), segment_ids_BT.shape)
  starts_BT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BT[:, :1], bool),
       segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  last_start_BT = jax.lax.cummax(jnp.where(starts_BT, idx_BT, 0), axis=1)
  return idx_BT - last_start_BT


def attention_mask(q_segments_BT, kv_segments_BS, *, causal: bool) -> jax.Array:
  """Boolean (B, 1, T, S) mask: same segment, key not padding, and (causal) key index <= query.

  A padding query (segment 0) may look at every real key: that keeps padded rows finite and
  matches Hugging Face, which masks keys only.
  """
  q = q_segments_BT[:, :, None]
  k = kv_segments_BS[:, None, :]
  allowed_BTS = (k != 0) & ((q == k) | (q == 0))
  if causal:
    t, s = q_segments_BT.shape[1], kv_segments_BS.shape[1]
    allowed_BTS &= jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + (s - t)
  return allowed_BTS[:, None, :, :]


def rope_frequencies(half: int, theta: float,
                     llama3: tuple[float, float, float, int] | None = None) -> jax.Array:
  """RoPE's ``half`` inverse wavelengths; ``llama3`` = (factor, low_freq_factor,
  high_freq_factor, original_max_len) rescales them as Hugging Face's rope_type='llama3'."""
  freq_h = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  if llama3 is None:
    return freq_h
  factor, low, high, original = llama3
  wavelen_h = 2 * math.pi / freq_h
  # Long wavelengths (beyond original / low) are stretched by factor, short ones (below
  # original / high) kept; in between, a blend linear in original / wavelength.
  smooth_h = (original / wavelen_h - low) / (high - low)
  blended_h = (1 - smooth_h) * freq_h / factor + smooth_h * freq_h
  return jnp.where(wavelen_h > original / low, freq_h / factor,
                   jnp.where(wavelen_h < original / high, freq_h, blended_h))


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float,
               llama3: tuple[float, float, float, int] | None = None) -> jax.Array:
  """Rotary position embedding in the half-split layout used by LLaMA and Hugging Face
  (``llama3``: see ``rope_frequencies``)."""
  half = x_BTNH.shape[-1] // 2
  freq_h = rope_frequencies(half, theta, llama3)
  angle_BTh = positions_BT[..., None].astype(jnp.float32) * freq_h
  sin, cos = jnp.sin(angle_BTh)[:, :, None, :], jnp.cos(angle_BTh)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def relative_position_bucket(relative_BTS: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's log-spaced buckets of (key position - query position)."""
  buckets = jnp.zeros_like(relative_BTS)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_BTS > 0).astype(relative_BTS.dtype) * num_buckets
    distance = jnp.abs(relative_BTS)
  else:
    distance = -jnp.minimum(relative_BTS, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # Guard the log against distance 0; those entries take the is_small branch anyway.
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
  large = max_exact + (log_ratio / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(relative_BTS.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nnx.Module):
  """T5's learned per-head bias over relative-position buckets, shared by all layers."""

  def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.num_buckets = cfg.rel_buckets
    self.max_distance = cfg.rel_max_distance
    self.embedding = nnx.Param(normal_init(cfg, (None, "heads"))(
        rngs.params(), (cfg.rel_buckets, cfg.num_heads), jnp.dtype(cfg.param_dtype)))

  def __call__(self, q_positions_BT: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
    relative_BTS = k_positions_BS[:, None, :] - q_positions_BT[:, :, None]
    bucket_BTS = relative_position_bucket(
        relative_BTS, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
        max_distance=self.max_distance)
    bias_BTSN = jnp.take(self.embedding[...], bucket_BTS, axis=0)
    return jnp.transpose(bias_BTSN, (0, 3, 1, 2)).astype(jnp.float32)


class Attention(nnx.Module):
  """Multi-head (or grouped-query) attention with optional RoPE; self- or cross-attention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    n, k, h, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    self.num_heads, self.kv_heads, self.head_dim = n, k, h
    qkv_bias = cfg.use_bias or cfg.qkv_bias
    self.query = dense(cfg, d, n * h, ("embed", "heads"), rngs=rngs, use_bias=qkv_bias,
                       lora_name="q")
    # 'kv_heads', not 'heads': with fewer KV heads than mesh.tensor they are replicated.
    self.key = dense(cfg, d, k * h, ("embed", "kv_heads"), rngs=rngs, use_bias=qkv_bias,
                     lora_name="k")
    self.value = dense(cfg, d, k * h, ("embed", "kv_heads"), rngs=rngs, use_bias=qkv_bias,
                       lora_name="v")
    self.out = dense(cfg, n * h, d, ("heads", "embed"), rngs=rngs, lora_name="o")
    self.rope_theta = cfg.rope_theta if cfg.position == "rope" else None
    self.rope_llama3 = None if cfg.rope_scaling_factor == 1.0 else (
        cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
        cfg.rope_original_max_len)
    self.scale = cfg.attention_scale
    self.implementation = cfg.attention_impl
    # Set by inspection code (plot.py) only: each call then sows its (B, N, T, S) weights as
    # an nnx.Intermediate named 'attention_weights'.
    self.record_weights = False

  def __call__(self, x_BTD: jax.Array, kv_BSD: jax.Array, *, mask_B1TS: jax.Array,
               bias_BNTS: jax.Array | None = None, q_positions_BT: jax.Array | None = None,
               k_positions_BS: jax.Array | None = None, causal: bool = False,
               segments: Segments | None = None, rng: jax.Array | None = None) -> jax.Array:
    """``rng``: LoRA adapters' dropout (none when None)."""
    k_BSKH, v_BSKH = self.keys_values(kv_BSD, k_positions_BS, rng)
    return self.attend(x_BTD, k_BSKH, v_BSKH, mask_B1TS=mask_B1TS, bias_BNTS=bias_BNTS,
                       q_positions_BT=q_positions_BT, causal=causal, segments=segments, rng=rng)

  def keys_values(self, kv_BSD: jax.Array, k_positions_BS: jax.Array | None = None,
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Keys (rotated when RoPE is on) and values of ``kv_BSD``, (B, S, K, H) each."""
    b, s, _ = kv_BSD.shape
    k_BSKH = project(self.key, kv_BSD, rng, 1).reshape(b, s, self.kv_heads, self.head_dim)
    v_BSKH = project(self.value, kv_BSD, rng, 2).reshape(b, s, self.kv_heads, self.head_dim)
    if self.rope_theta is not None:
      k_BSKH = apply_rope(k_BSKH, k_positions_BS, self.rope_theta, self.rope_llama3)
    return k_BSKH, v_BSKH

  def attend(self, x_BTD: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, *,
             mask_B1TS: jax.Array, bias_BNTS: jax.Array | None = None,
             q_positions_BT: jax.Array | None = None, causal: bool = False,
             segments: Segments | None = None, rng: jax.Array | None = None) -> jax.Array:
    """Queries from ``x_BTD`` over given keys and values (fresh or a KV cache), projected out;
    ``causal`` and ``segments``: see ``dot_product_attention``."""
    b, t, _ = x_BTD.shape
    q_BTNH = project(self.query, x_BTD, rng, 0).reshape(b, t, self.num_heads, self.head_dim)
    q_BTNH = sharding.constrain(q_BTNH, ("batch", "length", "heads", "kv"))
    if self.rope_theta is not None:
      q_BTNH = apply_rope(q_BTNH, q_positions_BT, self.rope_theta, self.rope_llama3)
    if bias_BNTS is not None:
      bias_BNTS = bias_BNTS.astype(q_BTNH.dtype)
    if self.record_weights:
      scale = self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)
      self.sow(nnx.Intermediate, "attention_weights", attention_weights(
          q_BTNH, k_BSKH, mask_B1TS=mask_B1TS, bias_BNTS=bias_BNTS, scale=scale))
    o_BTNH = dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS=mask_B1TS,
                                   bias_BNTS=bias_BNTS, scale=self.scale,
                                   implementation=self.implementation, causal=causal,
                                   segments=segments)
    o_BTNH = checkpoint_name(o_BTNH, ATTENTION_OUT)
    return project(self.out, o_BTNH.reshape(b, t, self.num_heads * self.head_dim), rng, 3)
