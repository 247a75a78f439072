"""A Transformer block (pre- or post-norm, optional cross-attention) and a stack of them.

The stack runs its layers as a Python loop or as one ``jax.lax.scan`` over stacked parameters
(``scan_layers``: one compiled block instead of L), with optional rematerialisation.
"""

from __future__ import annotations

import jax
from flax import nnx, struct

from lm_research import sharding
from lm_research.models.attention import Attention
from lm_research.models.config import ModelConfig
from lm_research.models.layers import Mlp, Norm, dropout

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
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


class Block(nnx.Module):
  """Self-attention, optional cross-attention and MLP, each with a residual connection."""

  def __init__(self, cfg: ModelConfig, *, cross: bool, rngs: nnx.Rngs):
    self.pre_norm = cfg.pre_norm
    self.rate = cfg.dropout_rate
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
      return x + dropout(fn(norm(x)), self.rate, rng)
    return norm(x + dropout(fn(x), self.rate, rng))

  def __call__(self, x_BTD: jax.Array, ctx: BlockContext, rng: jax.Array | None) -> jax.Array:
    rngs = [None] * 4 if rng is None else list(jax.random.split(rng, 4))
    x_BTD = self._residual(
        x_BTD, self.attn_norm,
        lambda h: self.attn(h, h, mask_B1TS=ctx.self_mask_B1TS, bias_BNTS=ctx.self_bias_BNTS,
                            q_positions_BT=ctx.positions_BT, k_positions_BS=ctx.positions_BT),
        rngs[0])
    if self.has_cross:
      x_BTD = self._residual(
          x_BTD, self.cross_norm,
          lambda h: self.cross_attn(h, ctx.memory_BSD, mask_B1TS=ctx.cross_mask_B1TS),
          rngs[1])
    x_BTD = self._residual(x_BTD, self.mlp_norm, lambda h: self.mlp(h, rngs[2]), rngs[3])
    return sharding.constrain(x_BTD, ("batch", "length", "embed"))


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

  def _rematerialised(self, graphdef):
    """The block as a pure function of its state, wrapped in jax.checkpoint when asked."""
    def apply(state, x, ctx, rng):
      return nnx.merge(graphdef, state)(x, ctx, rng)
    if self.remat == "none":
      return apply
    return jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat])
