"""Optimizer and learning-rate schedule from ``config.train`` (optax)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# Parameter leaves that get weight decay; biases, norm scales and other vectors do not.
DECAYED_NAMES = ("kernel", "embedding", "lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer part of ``config.train``."""

  steps: int
  learning_rate: float
  optimizer: str = "adamw"
  schedule: str = "linear"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 0.0
  ema_decay: float = 0.0
  # An nnx filter of the parameters to train (models/lora.py: train.lora); None trains all.
  # Not a config key: make_experiment sets it from the model.
  trainable: Callable | None = None

  def __post_init__(self):
    if self.optimizer not in ("adamw", "adafactor"):
      raise ValueError(f"train.optimizer={self.optimizer!r} is not one of adamw, adafactor.")
    if self.schedule not in ("linear", "cosine", "inverse_sqrt", "constant"):
      raise ValueError(f"train.schedule={self.schedule!r} is not one of linear, cosine, "
                       "inverse_sqrt, constant.")
    if self.learning_rate <= 0 or self.steps <= 0:
      raise ValueError("train.learning_rate and train.steps must be positive.")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"train.ema_decay={self.ema_decay} is not in [0, 1): 0 disables the "
                       "average, 0.99-0.9999 are usual.")

  @classmethod
  def from_train_config(cls, train: Any, trainable: Callable | None = None) -> "OptimConfig":
    """Picks the optimizer fields out of the ``config.train`` block."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: train[n] for n in names if n in train}, trainable=trainable)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Linear warmup to the peak, then linear / cosine / inverse-sqrt decay or constant."""
  warmup = max(cfg.warmup_steps, 0)
  peak = cfg.learning_rate
  decay_steps = max(cfg.steps - warmup, 1)
  if cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif cfg.schedule == "inverse_sqrt":
    offset = max(warmup, 1)
    # T5's rsqrt decay. The max keeps join_schedules' evaluation of this branch at warmup
    # steps (s < 0) finite: a host-side schedule(0) used to divide by zero.
    decay = lambda s: peak * jnp.sqrt(offset / jnp.maximum(s + offset, offset))  # noqa: E731
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
  """True for kernels and embedding tables, False for biases and norm scales."""
  def is_decayed(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [n for n in names if n not in (None, "value")]
    return bool(names) and names[-1] in DECAYED_NAMES
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(cfg: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The full update rule: clipping, then AdamW or Adafactor with the schedule."""
  schedule = learning_rate_schedule(cfg)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.optimizer == "adamw":
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
  else:
    parts.append(optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                                 weight_decay_mask=decay_mask))
  if cfg.ema_decay > 0:
    parts.append(params_ema(cfg.ema_decay))
  tx = optax.chain(*parts)
  return (tx if cfg.trainable is None else only(tx, cfg.trainable)), schedule


def only(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
  """``tx`` over the parameters ``trainable`` (an nnx filter) selects: its state covers only
  them, and updates are theirs (the train step differentiates only them, steps.py)."""
  def init(params):
    return tx.init(nnx.filter_state(params, trainable))

  def update(updates, state, params=None):
    return tx.update(updates, state, None if params is None
                     else nnx.filter_state(params, trainable))

  return optax.GradientTransformation(init, update)


class ParamsEMAState(NamedTuple):
  """Updates seen so far, and the moving average of the parameters after each of them."""

  count: jax.Array
  params_ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
  """Passes updates through unchanged and keeps an exponential moving average of the updated
  parameters in the optimizer state, so it is sharded, checkpointed and resumed with it.

  The decay at update t is min(decay, (1 + t) / (10 + t)), as in TensorFlow's
  ExponentialMovingAverage, so the early weights fade within the first steps instead of
  weighing on the average for ~1 / (1 - decay) of them.
  """
  def init(params):
    return ParamsEMAState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("params_ema needs the parameters: call update(updates, state, params).")
    t = state.count.astype(jnp.float32)
    rate = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    new_params = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: (rate * a + (1.0 - rate) * p).astype(a.dtype),
                           state.params_ema, new_params)
    return updates, ParamsEMAState(state.count + 1, average)

  return optax.GradientTransformation(init, update)


def inference_params(params: Any, opt_state: Any) -> Any:
  """The weights to evaluate, predict and export with: the moving average when train.ema_decay
  keeps one (of the trained parameters only, with LoRA: the frozen rest as they are), else
  ``params``."""
  for part in opt_state if isinstance(opt_state, tuple) else ():
    if isinstance(part, ParamsEMAState):
      if jax.tree.structure(part.params_ema) == jax.tree.structure(params):
        return part.params_ema
      return nnx.merge_state(params, part.params_ema)
  return params
