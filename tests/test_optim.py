"""Optimizer and schedule from config.train: hand-computed learning rates, the weight-decay mask,
Adafactor, and global-norm clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from lm_research.models import ModelConfig, build_model
from lm_research.optim import (OptimConfig, ParamsEMAState, decay_mask, inference_params,
                               learning_rate_schedule, make_optimizer)

# --- schedules: peak 1.0, 10 warmup steps, 100 steps in all ----------------------------------

WARMUP_VALUES = {0: 0.0, 1: 0.1, 5: 0.5, 9: 0.9, 10: 1.0}


@pytest.mark.parametrize("schedule,values", [
    ("linear", {55: 0.5, 82: 0.2, 100: 0.0, 150: 0.0}),  # 1 - (s - 10) / 90, then 0
    ("cosine", {55: 0.5, 32.5: 0.5 * (1 + math.cos(math.pi / 4)), 100: 0.0, 150: 0.0}),
    ("inverse_sqrt", {40: 0.5, 90: 1 / 3, 1000: 0.1}),  # sqrt(10 / s), T5's rsqrt decay
    ("constant", {11: 1.0, 100: 1.0, 1000: 1.0}),
])
def test_schedule_values_by_hand(schedule, values):
  """Linear warmup 0 -> peak over warmup_steps, then the named decay, at hand-picked steps."""
  lr = learning_rate_schedule(OptimConfig(steps=100, learning_rate=1.0, warmup_steps=10,
                                          schedule=schedule))
  for step, want in {**WARMUP_VALUES, **values}.items():
    assert float(lr(step)) == pytest.approx(want, abs=1e-6), step


@pytest.mark.parametrize("schedule,values", [
    ("linear", {0: 2.0, 25: 1.5, 100: 0.0}),
    ("constant", {0: 2.0, 100: 2.0}),
    ("inverse_sqrt", {0: 2.0, 3: 1.0}),  # offset 1: 2 * sqrt(1 / (s + 1))
])
def test_schedule_without_warmup_starts_at_peak(schedule, values):
  """warmup_steps=0: the first step already uses the peak."""
  lr = learning_rate_schedule(OptimConfig(steps=100, learning_rate=2.0, schedule=schedule))
  for step, want in values.items():
    assert float(lr(step)) == pytest.approx(want, abs=1e-6), step


@pytest.mark.parametrize("fields,message", [
    (dict(optimizer="sgd"), "train.optimizer='sgd' is not one of adamw, adafactor"),
    (dict(schedule="step"), "train.schedule='step' is not one of linear, cosine"),
    (dict(learning_rate=0.0), "train.learning_rate and train.steps must be positive"),
    (dict(steps=0), "train.learning_rate and train.steps must be positive"),
    (dict(ema_decay=1.0), r"train.ema_decay=1.0 is not in \[0, 1\)"),
])
def test_optim_config_errors(fields, message):
  """Unknown optimizer or schedule names and non-positive sizes fail at the boundary."""
  with pytest.raises(ValueError, match=message):
    OptimConfig(**dict(dict(steps=10, learning_rate=1e-3), **fields))


def test_from_train_config_reads_the_train_block():
  """Only optimizer fields are taken from config.train, with their values."""
  train = base.get_base().train
  train.update(learning_rate=0.25, schedule="cosine", weight_decay=0.5, grad_clip=2.0)
  cfg = OptimConfig.from_train_config(train)
  assert (cfg.learning_rate, cfg.schedule, cfg.weight_decay, cfg.grad_clip) == (
      0.25, "cosine", 0.5, 2.0)
  assert cfg.steps == train.steps and cfg.warmup_steps == train.warmup_steps


# --- weight-decay mask ------------------------------------------------------------------------

GPT = ModelConfig(family="decoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                  d_ff=64, max_len=16)


def mask_by_path(cfg: ModelConfig) -> dict[str, bool]:
  params = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)))[1]
  mask = decay_mask(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  paths = [jax.tree_util.keystr(p, simple=True, separator="/")
           for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return dict(zip(paths, jax.tree.leaves(mask)))


def decayed_paths(blocks: list[str]) -> set[str]:
  """Hand list: both embedding tables and the six kernels of every block."""
  kernels = ["attn/query", "attn/key", "attn/value", "attn/out", "mlp/wi", "mlp/wo"]
  return ({"embeddings/token/embedding/value", "embeddings/position/embedding/value"}
          | {f"{b}/{k}/kernel/value" for b in blocks for k in kernels})


@pytest.mark.parametrize("scan", [False, True])
def test_decay_mask_is_kernels_and_embeddings(scan):
  """True exactly for kernels and embedding tables; biases and norm scales are not decayed,
  including the 2-D stacked biases of a scan_layers model."""
  mask = mask_by_path(GPT.replace(scan_layers=scan))
  blocks = (["stack/layers/blocks"] if scan
            else ["stack/layers/blocks/0", "stack/layers/blocks/1"])
  assert {p for p, decayed in mask.items() if decayed} == decayed_paths(blocks)
  assert len(mask) == len(decayed_paths(blocks)) + 2 + 10 * len(blocks)  # + final norm, biases
  if scan:
    assert not mask["stack/layers/blocks/attn/query/bias/value"]


def test_weight_decay_touches_only_masked_leaves():
  """With zero gradients, one AdamW step at lr 1 shrinks kernels by lr * weight_decay and
  leaves biases and scales alone."""
  params = {"dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 2.0)},
            "norm": {"scale": jnp.full((2,), 2.0)}, "embed": {"embedding": jnp.full((4, 2), 2.0)}}
  tx, _ = make_optimizer(OptimConfig(steps=10, learning_rate=1.0, schedule="constant",
                                     weight_decay=0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1.8, rtol=1e-6)
  np.testing.assert_allclose(new["embed"]["embedding"], 1.8, rtol=1e-6)
  np.testing.assert_array_equal(new["dense"]["bias"], 2.0)
  np.testing.assert_array_equal(new["norm"]["scale"], 2.0)


# --- Adafactor and clipping -------------------------------------------------------------------

def test_adafactor_builds_and_steps():
  """Adafactor (factored second moments for a 128 x 256 kernel) reduces a quadratic loss."""
  rng = np.random.default_rng(0)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=(128, 256)), jnp.float32)},
            "b": {"bias": jnp.asarray(rng.normal(size=(256,)), jnp.float32)}}
  tx, _ = make_optimizer(OptimConfig(steps=20, learning_rate=0.1, optimizer="adafactor",
                                     schedule="constant", weight_decay=0.01, grad_clip=1.0))
  state = tx.init(params)
  v_row = optax.tree_utils.tree_get(state, "v_row")
  assert v_row["w"]["kernel"].shape == (128,)  # the kernel's statistics are factored

  def loss_fn(p):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  losses = []
  for _ in range(20):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("raw_norm,clip", [(10.0, 1.0), (0.5, 1.0)])
def test_grad_clip_bounds_the_global_norm(raw_norm, clip):
  """Adam's first moment after one step is (1 - b1) x the clipped gradient: its global norm
  is min(raw norm, clip), with the direction unchanged."""
  rng = np.random.default_rng(1)
  grads = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(5,))}
  scale = raw_norm / optax.global_norm(grads)
  grads = jax.tree.map(lambda g: jnp.asarray(g * scale, jnp.float32), grads)
  params = jax.tree.map(jnp.zeros_like, grads)
  tx, _ = make_optimizer(OptimConfig(steps=10, learning_rate=1e-3, b1=0.9, grad_clip=clip))
  _, state = tx.update(grads, tx.init(params), params)
  clipped = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
  assert float(optax.global_norm(clipped)) == pytest.approx(min(raw_norm, clip), rel=1e-5)
  factor = min(1.0, clip / raw_norm)
  for got, g in zip(jax.tree.leaves(clipped), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, g * factor, rtol=1e-5)


# --- moving average of the weights (train.ema_decay) -----------------------------------------

def test_params_ema_by_hand():
  """Adam with b1 = b2 = eps = 0 at rate 1 moves w by sign(-grad) = (1, 1) a step; the
  average follows the scalar recurrence a <- r a + (1 - r) w with r = min(0.5, (1 + t) /
  (10 + t)), written out here, across the warm-up (t < 8) and after it. The updates pass
  through unchanged."""
  params = {"w": jnp.zeros((2,))}
  tx, _ = make_optimizer(OptimConfig(steps=12, learning_rate=1.0, optimizer="adamw",
                                     schedule="constant", b1=0.0, b2=0.0, eps=0.0,
                                     ema_decay=0.5))
  grads = {"w": jnp.array([-1.0, -2.0])}
  state = tx.init(params)
  want, w = np.zeros(2), np.zeros(2)
  for t in range(12):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    w = w + np.array([1.0, 1.0])  # Adam with b1 = b2 = eps = 0 steps by sign(-grad)
    r = min(0.5, (1 + t) / (10 + t))
    want = r * want + (1 - r) * w
    np.testing.assert_allclose(params["w"], w, rtol=1e-6)
  np.testing.assert_allclose(inference_params(params, state)["w"], want, rtol=1e-6)
  assert int(state[-1].count) == 12


def test_inference_params_without_an_average_are_the_params():
  """No train.ema_decay: evaluation uses the parameters themselves; with it, the average
  kept in the chain's last state."""
  params = {"w": jnp.ones((2,))}
  tx, _ = make_optimizer(OptimConfig(steps=10, learning_rate=1.0))
  assert inference_params(params, tx.init(params)) is params
  tx, _ = make_optimizer(OptimConfig(steps=10, learning_rate=1.0, ema_decay=0.9))
  state = tx.init(params)
  assert isinstance(state[-1], ParamsEMAState)
  assert inference_params(params, state) is state[-1].params_ema
