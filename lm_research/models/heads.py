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
    self.dropout_impl = cfg.dropout_impl
    self.dense = dense(cfg, cfg.d_model, d_out, ("embed", None), rngs=rngs, use_bias=use_bias)

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    return self.dense(dropout(x, self.rate, rng, self.dropout_impl))


class Pooler(nnx.Module):
  """BERT's pooler: tanh(dense(v)), v the first token's (or the mean) hidden state."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.dense = dense(cfg, cfg.d_model, cfg.d_model, ("embed", None), rngs=rngs, use_bias=True)

  def __call__(self, x_BD: jax.Array) -> jax.Array:
    return jnp.tanh(self.dense(x_BD))


def mean_of_tokens(x_BTD: jax.Array, segments_BT: jax.Array) -> jax.Array:
  """Each row's average hidden state over its non-padding tokens."""
  weights_BT = (segments_BT != 0).astype(x_BTD.dtype)
  total_BD = jnp.einsum("btd,bt->bd", x_BTD, weights_BT)
  return total_BD / jnp.maximum(weights_BT.sum(axis=1, keepdims=True), 1.0)


def last_token(x_BTD: jax.Array, segments_BT: jax.Array) -> jax.Array:
  """Hidden state of each row's last non-padding token (decoder sequence classification)."""
  idx_BT = jnp.arange(x_BTD.shape[1])[None, :] * (segments_BT != 0)
  return jnp.take_along_axis(x_BTD, idx_BT.max(axis=1)[:, None, None], axis=1)[:, 0]
