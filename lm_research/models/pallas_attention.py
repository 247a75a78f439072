"""TPU attention kernels from JAX's Pallas ops: splash attention (causal, padded and packed rows,
by segment ids) and flash attention (the same plus an additive bias: T5's relative positions).

Both run per device under ``shard_map`` when a mesh is active (rows over data x fsdp, heads
over tensor): a Pallas call is opaque to the SPMD partitioner, which would otherwise gather
its inputs onto every device. Off TPU they run in Pallas's interpret mode (for tests).
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lm_research import sharding
from lm_research.models.attention_kernels import KERNEL_RESIDUALS, Segments, saving_residuals

BLOCK = 128  # the kernels' tile along queries and keys (lengths must be multiples of it)


def _pallas_ops():
  """JAX's Pallas TPU attention modules (flash, splash kernel, splash masks), imported on first
  use: they take about a second to import, which CPU runs need not pay."""
  from jax.experimental.pallas.ops.tpu import flash_attention  # noqa: PLC0415
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_kernel, splash_attention_mask)
  return flash_attention, splash_attention_kernel, splash_attention_mask


def _interpreting() -> bool:
  return jax.default_backend() != "tpu"


@contextlib.contextmanager
def _interpret_mode():
  """Pallas's interpret switch (jax 0.10.2's, behind pltpu.force_tpu_interpret_mode) set to
  the plain HLO interpreter: TPU interpret mode's callbacks cannot be rematerialised."""
  from jax._src import config  # noqa: PLC0415  (private: the flash kernel takes no interpret flag)
  previous = config.pallas_tpu_interpret_mode_context_manager.swap_local(True)
  try:
    yield
  finally:
    config.pallas_tpu_interpret_mode_context_manager.set_local(previous)


def unsupported(q_BTNH, k_BSKH) -> str:
  """Why the Pallas kernels cannot run this call ('' when they can)."""
  t, s = q_BTNH.shape[1], k_BSKH.shape[1]
  for name, n in (("query", t), ("key", s)):
    if n % BLOCK:
      return f"a {name} length of {n} (not a multiple of {BLOCK})"
  return ""


def _per_device(fn, arrays, batch_axes):
  """``fn(*arrays)`` under shard_map on the active mesh: each array's axis 0 (rows) over data x
  fsdp and its ``batch_axes`` entry (heads, or None) over tensor; directly with no mesh."""
  mesh = sharding.current_mesh()
  if mesh is None:
    return fn(*arrays)
  rows = ("data", "fsdp")

  def spec(x, heads_axis):
    if x is None:
      return None
    parts = [None] * x.ndim
    parts[0] = rows if x.shape[0] > 1 else None
    if heads_axis is not None and x.shape[heads_axis] > 1:
      parts[heads_axis] = "tensor"
    return P(*parts)
  in_specs = tuple(spec(x, a) for x, a in zip(arrays, batch_axes))
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=in_specs[0],
                       check_vma=False)(*arrays)


def _heads_major(q_BTNH, k_BSKH, v_BSKH):
  """(B, N, T, H) queries and keys/values repeated to N heads (the kernels' MHA form)."""
  groups = q_BTNH.shape[2] // k_BSKH.shape[2]
  k_BSNH, v_BSNH = (jnp.repeat(x, groups, axis=2) if groups > 1 else x for x in (k_BSKH, v_BSKH))
  return (jnp.swapaxes(x, 1, 2) for x in (q_BTNH, k_BSNH, v_BSNH))


def splash_attention(q_BTNH, k_BSKH, v_BSKH, *, scale: float | None,
                     segments: Segments) -> jax.Array:
  """Splash attention: a static causal (or full) mask and the rows' segment ids, no bias."""
  _, splash_lib, mask_lib = _pallas_ops()
  scale = 1.0 / math.sqrt(q_BTNH.shape[-1]) if scale is None else scale
  segments = segments if segments.packed else segments.padding_only()
  q_BNTH, k_BNSH, v_BNSH = _heads_major(q_BTNH * jnp.asarray(scale, q_BTNH.dtype), k_BSKH, v_BSKH)

  def local(q_BNTH, k_BNSH, v_BNSH, q_seg_BT, kv_seg_BS):
    n, t, s = q_BNTH.shape[1], q_BNTH.shape[2], k_BNSH.shape[2]
    shape = (t, s)
    head_mask = mask_lib.CausalMask(shape) if segments.causal else mask_lib.FullMask(shape)
    kernel = splash_lib.make_splash_mha(
        mask_lib.MultiHeadMask([head_mask] * n), head_shards=1,
        q_seq_shards=1, residual_checkpoint_name=KERNEL_RESIDUALS, interpret=_interpreting())
    ids = splash_lib.SegmentIds(q_seg_BT, kv_seg_BS)
    return jax.vmap(kernel)(q_BNTH, k_BNSH, v_BNSH, segment_ids=ids)

  o_BNTH = _per_device(local, (q_BNTH, k_BNSH, v_BNSH, segments.q_BT, segments.kv_BS),
                       (1, 1, 1, None, None))
  return jnp.swapaxes(o_BNTH, 1, 2)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, *, bias_BNTS, scale: float | None,
                    segments: Segments) -> jax.Array:
  """Flash attention with an additive bias (and its gradient) and the rows' segment ids."""
  flash_lib, _, _ = _pallas_ops()
  scale = 1.0 / math.sqrt(q_BTNH.shape[-1]) if scale is None else scale
  segments = segments if segments.packed else segments.padding_only()
  # The kernel adds the bias before its scale: scale the queries instead (as T5 does, 1.0).
  q_BNTH, k_BNSH, v_BNSH = _heads_major(q_BTNH * jnp.asarray(scale, q_BTNH.dtype), k_BSKH, v_BSKH)
  b, n, t, s = q_BNTH.shape[0], q_BNTH.shape[1], q_BNTH.shape[2], k_BNSH.shape[2]
  bias_BNTS = jnp.broadcast_to(bias_BNTS, (b, n, t, s))  # the kernel takes the full shape

  def local(q_BNTH, k_BNSH, v_BNSH, bias_BNTS, q_seg_BT, kv_seg_BS):
    blocks = flash_lib.BlockSizes.get_default(*q_BNTH.shape[:3], k_BNSH.shape[2], BLOCK)
    attend = functools.partial(flash_lib.flash_attention, causal=segments.causal,
                               sm_scale=1.0, block_sizes=blocks)
    kernel = saving_residuals(
        lambda q, k, v, ab, sq, skv: attend(q, k, v, ab, flash_lib.SegmentIds(sq, skv)),
        _interpret_mode if _interpreting() else None)
    return kernel(q_BNTH, k_BNSH, v_BNSH, bias_BNTS, q_seg_BT, kv_seg_BS)

  o_BNTH = _per_device(local, (q_BNTH, k_BNSH, v_BNSH, bias_BNTS, segments.q_BT, segments.kv_BS),
                       (1, 1, 1, 1, None, None))
  return jnp.swapaxes(o_BNTH, 1, 2)
