"""Pure train and eval steps over (graphdef, state): jitted once by the trainer with shardings.

``train_step(graphdef, state, batch) -> (state, metrics)``: gradient accumulation over
microbatches, global-norm metrics, and a non-finite guard that keeps the last good state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from lm_research.models import lora
from lm_research.objectives.losses import Objective


@struct.dataclass
class TrainState:
  """Everything a step changes: parameters, optimizer state, step counter, base RNG."""

  step: jax.Array
  params: Any  # nnx.State of the model's Params
  opt_state: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static options of the train step."""

  grad_accum_steps: int = 1
  z_loss: float = 0.0
  # An nnx filter of the parameters to differentiate and update (models/lora.py); None: all.
  # The optimizer must hold state for exactly these (optim.make_optimizer's ``trainable``).
  trainable: Any = None


def _split_microbatches(batch: dict, k: int) -> dict:
  """(B, ...) -> (k, B/k, ...) taking every k-th row, so each microbatch spans all devices."""
  def split(x):
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def _tree_where(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def train_step(graphdef: nnx.GraphDef, state: TrainState, batch: dict, *, objective: Objective,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               cfg: StepConfig) -> tuple[TrainState, dict]:
  """One optimizer update on ``batch``; returns the new state and scalar metrics."""
  rng = jax.random.fold_in(state.rng, state.step)
  denominators = objective.denominators(batch)
  # Gradients only of what trains: a LoRA run never computes (or stores) the frozen base's.
  trained, frozen = lora.split(state.params, cfg.trainable)

  def loss_fn(params, micro, micro_rng):
    model = nnx.merge(graphdef, lora.join(params, frozen))
    numerators = objective.numerators(model, micro, micro_rng, cfg.z_loss)
    ratios = objective.ratios(numerators, denominators)
    return ratios["loss"], ratios

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if cfg.grad_accum_steps == 1:
    (_, ratios), grads = grad_fn(trained, batch, rng)
  else:
    micro = _split_microbatches(batch, cfg.grad_accum_steps)

    def accumulate(carry, inputs):
      i, mb = inputs
      (_, r), g = grad_fn(trained, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, r)), None

    metric_names = set(objective.terms) | {"loss"}
    zeros = (jax.tree.map(jnp.zeros_like, trained),
             {name: jnp.zeros((), jnp.float32) for name in metric_names})
    (grads, ratios), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(cfg.grad_accum_steps), micro))

  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, trained)
  finite = jnp.isfinite(ratios["loss"]) & jnp.isfinite(grad_norm)
  # A non-finite update is never applied, so the state stays the last good one; the host
  # then stops the run or carries on, as train.on_nan says.
  trained = _tree_where(finite, optax.apply_updates(trained, updates), trained)
  params = lora.join(trained, frozen)
  opt_state = _tree_where(finite, opt_state, state.opt_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = dict(ratios, grad_norm=grad_norm, param_norm=optax.global_norm(params),
                 learning_rate=schedule(state.step), finite=finite,
                 tokens=objective.tokens(batch).astype(jnp.float32))
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, params: Any, batch: dict, *,
              objective: Objective) -> tuple[dict, dict]:
  """Numerator and denominator sums of every metric on one batch (summed over batches later)."""
  numerators = objective.numerators(nnx.merge(graphdef, params), batch, None, 0.0)
  return numerators, objective.denominators(batch)
