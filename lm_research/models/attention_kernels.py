"""Fused attention kernels behind ``attention.dot_product_attention``: cuDNN on NVIDIA GPUs
(``jax.nn.dot_product_attention``), and what every kernel shares: the segment ids it is given
instead of a dense mask, its fallback note, and the name its saved residuals carry.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.ad_checkpoint import checkpoint_name

# The name remat policies use to keep a kernel's residuals (its output and log-sum-exp, and
# its inputs): models/blocks.py 'save_dots', so the backward pass does not rerun the forward.
KERNEL_RESIDUALS = "attention_residuals"

_noted: set[str] = set()


@struct.dataclass
class Segments:
  """What a dense attention mask was built from, for kernels that take structure instead.

  ``q_BT`` / ``kv_BS``: segment ids (0 = padding, 1.. = documents); ``causal``: self-attention
  with keys after the query hidden; ``packed``: several documents may share a row (explicit
  segment ids), else a row is one document followed by padding.
  """

  q_BT: jax.Array
  kv_BS: jax.Array
  causal: bool = struct.field(pytree_node=False, default=False)
  packed: bool = struct.field(pytree_node=False, default=False)

  def padding_only(self) -> "Segments":
    """Unpacked rows as kernels want them: every query 1, keys 1 (token) or 0 (padding). A
    padding query then sees every real key, as ``attention.attention_mask`` lets it."""
    return self.replace(q_BT=jnp.ones_like(self.q_BT), kv_BS=(self.kv_BS != 0).astype(jnp.int32))


def note_fallback(kernel: str, reason: str) -> None:
  """Logs once per reason that ``kernel`` is not used, and why (the XLA path runs instead)."""
  if reason not in _noted:
    _noted.add(reason)
    logging.getLogger("lm_research").warning(
        "attention: %s cannot express %s; using the XLA attention there.", kernel, reason)


def saving_residuals(fn, context=None):
  """``fn(*arrays)`` as a custom VJP whose residuals carry the name ``KERNEL_RESIDUALS``.

  A kernel's own custom VJP keeps its residuals out of sight of remat policies, which then
  recompute the whole forward kernel in the backward pass; named here, 'save_dots' keeps them.
  ``context``: a context manager entered around the forward and the backward (interpret mode).
  """
  def run(thunk):
    if context is None:
      return thunk()
    with context():
      return thunk()

  @jax.custom_vjp
  def call(*args):
    return run(lambda: fn(*args))

  def forward(*args):
    out, vjp = run(lambda: jax.vjp(fn, *args))
    return out, jax.tree.map(lambda r: checkpoint_name(r, KERNEL_RESIDUALS), vjp)

  def backward(vjp, g):
    return run(lambda: vjp(g))

  call.defvjp(forward, backward)
  return call


def cudnn_unsupported(q_BTNH, bias_BNTS, segments: Segments | None) -> str:
  """Why cuDNN's flash attention cannot run this call ('' when it can)."""
  t, h = q_BTNH.shape[1], q_BTNH.shape[-1]
  if segments is None:
    return "a dense mask (decoding against a KV cache)"
  if segments.packed:
    return "packed segments (several documents per row)"
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
    return f"{q_BTNH.dtype} inputs (it takes bfloat16/float16)"
  if h % 8 or h > 128:
    return f"head_dim {h} (it takes multiples of 8 up to 128)"
  if bias_BNTS is not None and (t % 2 or segments.kv_BS.shape[1] % 2):
    return "a bias with odd sequence lengths"
  return ""


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, *, bias_BNTS, scale: float,
                    segments: Segments) -> jax.Array:
  """cuDNN flash attention: ``is_causal`` and per-row lengths (right padding), no dense mask,
  so it skips the masked blocks; T5's relative bias goes in as ``bias``."""
  if scale is None:
    scale = 1.0 / math.sqrt(q_BTNH.shape[-1])
  q_lengths_B = jnp.sum(segments.q_BT != 0, axis=1, dtype=jnp.int32)
  kv_lengths_B = jnp.sum(segments.kv_BS != 0, axis=1, dtype=jnp.int32)

  def attend(q, k, v, bias, q_lengths, kv_lengths):
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, scale=scale, is_causal=segments.causal,
        query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths, implementation="cudnn")
  return saving_residuals(attend)(q_BTNH, k_BSKH, v_BSKH, bias_BNTS, q_lengths_B, kv_lengths_B)
