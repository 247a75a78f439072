"""A Transformer block (pre- or post-norm, optional cross-attention) and a stack of them.

The stack runs its layers as a Python loop or as one ``jax.lax.scan`` over stacked parameters
(``scan_layers``: one compiled block instead of L), with optional rematerialisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lm_research import sharding
from lm_research.models.attention import ATTENTION_OUT, Attention
from lm_research.models.attention_kernels import KERNEL_RESIDUALS, Segments
from lm_research.models.config import ModelConfig
from lm_research.models.layers import DROPOUT_MASK, Mlp, Norm, dropout

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    # The matmuls with weights; the attention output (and a fused kernel's residuals: output
    # and log-sum-exp), which spares the backward pass a second attention forward; and the
    # dropout masks (a byte per element), which spares it hashing them again.
    "save_dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, DROPOUT_MASK,
                                                      KERNEL_RESIDUALS)),
}


@struct.dataclass
class BlockContext:
  """What every layer of a stack needs besides its input: masks, biases, positions, memory."""

  self_mask_B1TS: jax.Array
  positions_BT: jax.Array
  self_bias_BNTS: jax.Array | None = None
  memory_BSD: jax.Array | None = None  # encoder output, for cross-attention
  cross_mask_B1TS: jax.Array | None = None
  memory_positions_BS: jax.Array | None = None
  cache_index: jax.Array | None = None  # decoding: the KV-cache slot of the first new token
  # self_mask_B1TS is causal self-attention's, so the attention may skip the upper triangle
  self_causal: bool = struct.field(pytree_node=False, default=False)
  # What the masks were built from, for fused kernels (None: only the dense masks hold)
  self_segments: Segments | None = None
  cross_segments: Segments | None = None


@struct.dataclass
class KVCache:
  """One layer's cached keys and values, (B, S, K, H); a stack holds them on a leading L axis.

  ``cross_*`` are the keys and values of the encoder output, computed once before decoding.
  """

  keys: jax.Array
  values: jax.Array
  cross_keys: jax.Array | None = None
  cross_values: jax.Array | None = None


class Block(nnx.Module):
  """Self-attention, optional cross-attention and MLP, each with a residual connection."""

  def __init__(self, cfg: ModelConfig, *, cross: bool, rngs: nnx.Rngs):
    self.pre_norm = cfg.pre_norm
    self.rate = cfg.dropout_rate
    self.dropout_impl = cfg.dropout_impl
    self.attn_norm = Norm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    if cross:
      self.cross_norm = Norm(cfg, rngs=rngs)
      self.cross_attn = Attention(cfg, rngs=rngs)
    self.has_cross = cross
    self.mlp_norm = Norm(cfg, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)

  def _residual(self, x, norm, fn, rng):
    """Pre-norm: x + drop(fn(norm(x))). Post-norm (BERT): norm(x + drop(fn(x)))."""
    if self.pre_norm:
      return x + dropout(fn(norm(x)), self.rate, rng, self.dropout_impl)
    return norm(x + dropout(fn(x), self.rate, rng, self.dropout_impl))

  def __call__(self, x_BTD: jax.Array, ctx: BlockContext, rng: jax.Array | None) -> jax.Array:
    rngs = [None] * 4 if rng is None else list(jax.random.split(rng, 4))
    x_BTD = self._residual(
        x_BTD, self.attn_norm,
        lambda h: self.attn(h, h, mask_B1TS=ctx.self_mask_B1TS, bias_BNTS=ctx.self_bias_BNTS,
                            q_positions_BT=ctx.positions_BT, k_positions_BS=ctx.positions_BT,
                            causal=ctx.self_causal, segments=ctx.self_segments, rng=rngs[0]),
        rngs[0])
    if self.has_cross:
      x_BTD = self._residual(
          x_BTD, self.cross_norm,
          lambda h: self.cross_attn(h, ctx.memory_BSD, mask_B1TS=ctx.cross_mask_B1TS,
                                    segments=ctx.cross_segments, rng=rngs[1]),
          rngs[1])
    x_BTD = self._residual(x_BTD, self.mlp_norm, lambda h: self.mlp(h, rngs[2]), rngs[3])
    return sharding.constrain(x_BTD, ("batch", "length", "embed"))

  def decode(self, x_BTD: jax.Array, ctx: BlockContext,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """The block on new tokens against a KV cache; returns (x, updated cache).

    Their keys/values are written at slot ``ctx.cache_index``, then the queries attend over the
    whole cache; ``ctx.self_mask_B1TS`` hides empty and padding slots.
    """
    def self_attn(h_BTD):
      nonlocal cache  # _residual only passes h in; the updated cache leaves through here
      k_BTKH, v_BTKH = self.attn.keys_values(h_BTD, ctx.positions_BT)
      start = (0, ctx.cache_index, 0, 0)
      cache = cache.replace(
          keys=jax.lax.dynamic_update_slice(cache.keys, k_BTKH.astype(cache.keys.dtype), start),
          values=jax.lax.dynamic_update_slice(cache.values, v_BTKH.astype(cache.values.dtype),
                                              start))
      return self.attn.attend(h_BTD, cache.keys, cache.values, mask_B1TS=ctx.self_mask_B1TS,
                              bias_BNTS=ctx.self_bias_BNTS, q_positions_BT=ctx.positions_BT)

    x_BTD = self._residual(x_BTD, self.attn_norm, self_attn, None)
    if self.has_cross:
      x_BTD = self._residual(
          x_BTD, self.cross_norm,
          lambda h: self.cross_attn.attend(h, cache.cross_keys, cache.cross_values,
                                           mask_B1TS=ctx.cross_mask_B1TS),
          None)
    x_BTD = self._residual(x_BTD, self.mlp_norm, lambda h: self.mlp(h, None), None)
    return sharding.constrain(x_BTD, ("batch", "length", "embed")), cache

  def empty_cache(self, batch_size: int, max_length: int, dtype,
                  memory_BSD: jax.Array | None = None) -> KVCache:
    """Zero keys/values for ``max_length`` slots; cross keys/values of ``memory_BSD`` if given."""
    shape = (batch_size, max_length, self.attn.kv_heads, self.attn.head_dim)
    cache = KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype))
    if self.has_cross and memory_BSD is not None:
      cross_k, cross_v = self.cross_attn.keys_values(memory_BSD)
      cache = cache.replace(cross_keys=cross_k.astype(dtype), cross_values=cross_v.astype(dtype))
    return cache


class LayerStack(nnx.Module):
  """``num_layers`` blocks applied in order, as a loop or a scan, optionally rematerialised."""

  def __init__(self, cfg: ModelConfig, num_layers: int, *, cross: bool, rngs: nnx.Rngs):
    self.scan = cfg.scan_layers
    self.remat = cfg.remat
    self.num_layers = num_layers
    if cfg.scan_layers:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_stacked(r: nnx.Rngs) -> Block:
        return Block(cfg, cross=cross, rngs=r)
      self.blocks = make_stacked(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, cross=cross, rngs=rngs) for _ in range(num_layers)])

  def __call__(self, x_BTD: jax.Array, ctx: BlockContext, rng: jax.Array | None) -> jax.Array:
    layer_rngs = None if rng is None else jax.random.split(rng, self.num_layers)
    if self.scan:
      graphdef, stacked = nnx.split(self.blocks)
      apply = self._rematerialised(graphdef)

      def body(x, layer):
        state, layer_rng = layer
        return apply(state, x, ctx, layer_rng), None

      x_BTD, _ = jax.lax.scan(body, x_BTD, (stacked, layer_rngs))
      return x_BTD
    for i, block in enumerate(self.blocks):
      graphdef, state = nnx.split(block)
      layer_rng = None if layer_rngs is None else layer_rngs[i]
      x_BTD = self._rematerialised(graphdef)(state, x_BTD, ctx, layer_rng)
    return x_BTD

  def decode(self, x_BTD: jax.Array, ctx: BlockContext,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Every block's ``decode`` in order; ``cache`` leaves carry a leading layer axis."""
    if self.scan:
      graphdef, stacked = nnx.split(self.blocks)

      def body(x, layer):
        state, layer_cache = layer
        return nnx.merge(graphdef, state).decode(x, ctx, layer_cache)

      return jax.lax.scan(body, x_BTD, (stacked, cache))
    new_caches = []
    for i, block in enumerate(self.blocks):
      x_BTD, layer_cache = block.decode(x_BTD, ctx, jax.tree.map(lambda a, i=i: a[i], cache))
      new_caches.append(layer_cache)
    return x_BTD, jax.tree.map(lambda *layers: jnp.stack(layers), *new_caches)

  def empty_cache(self, batch_size: int, max_length: int, dtype,
                  memory_BSD: jax.Array | None = None) -> KVCache:
    """Every layer's ``Block.empty_cache``, stacked on a leading layer axis (loop or scan)."""
    if self.scan:
      graphdef, stacked = nnx.split(self.blocks)

      def one(state):
        return nnx.merge(graphdef, state).empty_cache(batch_size, max_length, dtype, memory_BSD)

      return jax.lax.map(one, stacked)
    layers = [block.empty_cache(batch_size, max_length, dtype, memory_BSD)
              for block in self.blocks]
    return jax.tree.map(lambda *a: jnp.stack(a), *layers)

  def _rematerialised(self, graphdef):
    """The block as a pure function of its state, wrapped in jax.checkpoint when asked."""
    def apply(state, x, ctx, rng):
      return nnx.merge(graphdef, state)(x, ctx, rng)
    if self.remat == "none":
      return apply
    return jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat])
