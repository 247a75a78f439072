"""Building blocks shared by the three families: dense layers, norms, MLPs, dropout.

Shape glossary used in names throughout ``models/``:
  B batch, T query length, S key length, D d_model, F d_ff, N heads, K kv heads, H head_dim,
  V vocabulary, L layers.
Every parameter is created with logical axis names (see ``lm_research.sharding``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lm_research.models import dropout_mask
from lm_research.models.config import ModelConfig


def normal_init(cfg: ModelConfig, names: tuple[str | None, ...]):
  """Truncated-free normal(0, initializer_range) initializer carrying logical axis names."""
  return nnx.with_partitioning(
      nnx.initializers.normal(cfg.initializer_range), names, eager_sharding=False)


def zeros_init(names: tuple[str | None, ...]):
  """Zeros initializer carrying logical axis names."""
  return nnx.with_partitioning(nnx.initializers.zeros_init(), names, eager_sharding=False)


def ones_init(names: tuple[str | None, ...]):
  """Ones initializer carrying logical axis names."""
  return nnx.with_partitioning(nnx.initializers.ones_init(), names, eager_sharding=False)


def dense(cfg: ModelConfig, d_in: int, d_out: int, names: tuple[str, str], *,
          rngs: nnx.Rngs, use_bias: bool | None = None,
          lora_name: str | None = None) -> nnx.Linear:
  """A Linear layer with kernel (d_in, d_out) named ``names`` and a bias named names[1]; a
  ``LoRALinear`` when ``lora_name`` is one of ``cfg.lora``'s targets."""
  linear = dict(use_bias=cfg.use_bias if use_bias is None else use_bias,
                dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                kernel_init=normal_init(cfg, names), bias_init=zeros_init((names[1],)),
                rngs=rngs)
  if cfg.lora.adapts(lora_name):
    return LoRALinear(d_in, d_out, cfg=cfg, names=names, **linear)
  return nnx.Linear(d_in, d_out, **linear)


class LoRAParam(nnx.Param):
  """A low-rank adapter matrix: the only body parameters a LoRA fine-tune trains."""


class LoRALinear(nnx.Linear):
  """A Linear layer plus a trainable low-rank update: x W + b + (alpha / rank) drop(x) A B."""

  def __init__(self, d_in: int, d_out: int, *, cfg: ModelConfig, names: tuple[str, str],
               rngs: nnx.Rngs, **linear):
    """nnx.Linear's layer, plus A (d_in, rank) and B (rank, d_out) sharded along its axes."""
    super().__init__(d_in, d_out, rngs=rngs, **linear)
    dtype = jnp.dtype(cfg.param_dtype)
    # A as PEFT draws it (kaiming-uniform, a=sqrt(5): U(+-1/sqrt(d_in))); B zero, so the
    # adapted model starts as the base model.
    a_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    self.lora_a = LoRAParam(nnx.with_partitioning(a_init, (names[0], None), eager_sharding=False)(
        rngs.params(), (d_in, cfg.lora.rank), dtype))
    self.lora_b = LoRAParam(zeros_init((None, names[1]))(None, (cfg.lora.rank, d_out), dtype))
    self.lora_scale = cfg.lora.alpha / cfg.lora.rank
    self.lora_dropout = cfg.lora.dropout
    self.dropout_impl = cfg.dropout_impl

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    y = super().__call__(x)
    h = dropout(x, self.lora_dropout, rng, self.dropout_impl).astype(y.dtype)
    a = self.lora_a[...].astype(y.dtype)
    b = self.lora_b[...].astype(y.dtype)
    return y + (h @ a @ b) * jnp.asarray(self.lora_scale, y.dtype)


def project(layer: nnx.Linear, x: jax.Array, rng: jax.Array | None, salt: int) -> jax.Array:
  """``layer(x)``; a LoRA layer also gets its adapter-dropout key, fold_in(rng, salt)."""
  if isinstance(layer, LoRALinear) and rng is not None:
    return layer(x, jax.random.fold_in(rng, salt))
  return layer(x)


class Norm(nnx.Module):
  """LayerNorm or RMSNorm (T5/LLaMA: no mean, no bias), computed in float32."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    del rngs  # deterministic init
    self.kind = cfg.norm
    self.eps = cfg.norm_eps
    # 'norm', not 'embed': replicated (sharding.PARAM_RULES), so no all-gather per norm.
    self.scale = nnx.Param(ones_init(("norm",))(None, (cfg.d_model,), jnp.dtype(cfg.param_dtype)))
    if cfg.norm == "layernorm":
      self.bias = nnx.Param(zeros_init(("norm",))(None, (cfg.d_model,),
                                                   jnp.dtype(cfg.param_dtype)))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if self.kind == "layernorm":
      mean = x.mean(-1, keepdims=True)
      x = x - mean
    var = jnp.mean(jnp.square(x), -1, keepdims=True)
    y = x * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    if self.kind == "layernorm":
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


def activation_fn(name: str):
  """Maps an activation name to its function (HF's 'gelu' is the exact erf form)."""
  return {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "silu": jax.nn.silu,
  }[name]


# The name remat policies use to keep dropout masks (models/blocks.py: 'save_dots').
DROPOUT_MASK = "dropout_mask"


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, impl: str = "hash") -> jax.Array:
  """Inverted dropout; identity when ``rng`` is None (evaluation) or rate is 0. ``impl``: how
  the mask's bits are made (models/dropout_mask.py)."""
  if rng is None or rate == 0.0:
    return x
  keep = checkpoint_name(dropout_mask.keep_mask(rng, rate, x.shape, impl), DROPOUT_MASK)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Mlp(nnx.Module):
  """Feed-forward block: act(x W_in) W_out, or the gated form act(x W_gate) * (x W_in) W_out."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.activation = cfg.activation
    self.gated = cfg.gated_mlp
    if cfg.gated_mlp:
      self.gate = dense(cfg, cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs=rngs,
                        lora_name="gate")
    self.wi = dense(cfg, cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs=rngs, lora_name="wi")
    self.wo = dense(cfg, cfg.d_ff, cfg.d_model, ("mlp", "embed"), rngs=rngs, lora_name="wo")
    # HF's T5 drops out inside the MLP; BERT and GPT-2 only after it (done by the block).
    self.rate = cfg.dropout_rate if cfg.family == "encoder_decoder" else 0.0
    self.dropout_impl = cfg.dropout_impl

  def __call__(self, x_BTD: jax.Array, rng: jax.Array | None) -> jax.Array:
    """``rng``: T5's inner dropout, and LoRA adapters' (keys folded from it)."""
    act = activation_fn(self.activation)
    if self.gated:
      h_BTF = act(project(self.gate, x_BTD, rng, 1)) * project(self.wi, x_BTD, rng, 2)
    else:
      h_BTF = act(project(self.wi, x_BTD, rng, 2))
    h_BTF = dropout(h_BTF, self.rate, rng, self.dropout_impl)
    return project(self.wo, h_BTF, rng, 3)
