"""Output heads: BERT's MLM transform + tied decoder, NSP, and classifiers over tokens or pools."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm_research.models.config import ModelConfig
from lm_research.models.layers import Norm, activation_fn, dense, dropout, zeros_init


class MlmHead(nnx.Module):
  """BERT's masked-LM head: dense + activation + LayerNorm, then the tied embedding + a bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.activation = cfg.activation
    self.transform = dense(cfg, cfg.d_model, cfg.d_model, ("embed", None), rngs=rngs,
                           use_bias=True)
    self.norm = Norm(cfg, rngs=rngs)
    self.bias = nnx.Param(zeros_init(("vocab",))(None, (cfg.vocab_size,),
                                                 jnp.dtype(cfg.param_dtype)))

  def __call__(self, x_BTD: jax.Array, embedding: nnx.Embed) -> jax.Array:
    h_BTD = self.norm(activation_fn(self.activation)(self.transform(x_BTD)))
    return embedding.attend(h_BTD) + self.bias[...].astype(h_BTD.dtype)


class Classifier(nnx.Module):
  """Dropout then a dense layer to ``num_labels`` (per token, or on a pooled vector)."""

  def __init__(self, cfg: ModelConfig, d_out: int, *, rngs: nnx.Rngs, use_bias: bool = True):
    self.rate = cfg.dropout_rate
    self.dense = dense(cfg, cfg.d_model, d_out, ("embed", None), rngs=rngs, use_bias=use_bias)

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    return self.dense(dropout(x, self.rate, rng))


class Pooler(nnx.Module):
  """BERT's pooler: tanh(dense(first token))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.dense = dense(cfg, cfg.d_model, cfg.d_model, ("embed", None), rngs=rngs, use_bias=True)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    return jnp.tanh(self.dense(x_BTD[:, 0]))


def last_token(x_BTD: jax.Array, segments_BT: jax.Array) -> jax.Array:
  """Hidden state of each row's last non-padding token (decoder sequence classification)."""
  idx_BT = jnp.arange(x_BTD.shape[1])[None, :] * (segments_BT != 0)
  return jnp.take_along_axis(x_BTD, idx_BT.max(axis=1)[:, None, None], axis=1)[:, 0]
