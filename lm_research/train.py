"""The training loop: mesh, sharded state, jitted steps, data, logging one step behind, eval.

Reads top to bottom like the run it drives:
  Config -> Mesh -> Model + optimizer state (created sharded) -> Steps (jit) -> Data -> Loop.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lm_research import metrics as flops
from lm_research import sharding, steps, writers
from lm_research.data.synthetic import SyntheticSource, span_target_length
from lm_research.models import ModelConfig, build_model
from lm_research.objectives.registry import get_objective
from lm_research.optim import OptimConfig, make_optimizer


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/Inf and train.on_nan is 'stop'."""


@dataclasses.dataclass
class Experiment:
  """Typed pieces of a config, validated before anything is compiled."""

  config: ml_collections.ConfigDict
  model_cfg: ModelConfig
  optim_cfg: OptimConfig
  step_cfg: steps.StepConfig
  mesh: jax.sharding.Mesh
  objective: Any

  @property
  def target_len(self) -> int:
    """Decoder length for encoder-decoder batches (T5's 512 -> 114 rule), else 0."""
    return span_target_length(self.config.train.seq_len) if self.model_cfg.family == \
        "encoder_decoder" else 0


def make_experiment(config: ml_collections.ConfigDict,
                    devices: list | None = None) -> Experiment:
  """Turns the config into typed parts and checks mesh, batch and model fit together."""
  model_cfg = ModelConfig.from_dict(config.model)
  objective = get_objective(config.objective)
  if objective.family != model_cfg.family:
    raise ValueError(f"objective={config.objective!r} trains a {objective.family} model but "
                     f"model.family={model_cfg.family!r}; pick a matching config.")
  if config.train.on_nan not in ("stop", "skip"):
    raise ValueError(f"train.on_nan={config.train.on_nan!r} is not one of stop, skip.")
  if model_cfg.position == "learned" and config.train.seq_len > model_cfg.max_len:
    raise ValueError(f"train.seq_len={config.train.seq_len} exceeds model.max_len="
                     f"{model_cfg.max_len}; lower the one or raise the other.")
  mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh), devices)
  sharding.check_divisibility(mesh, global_batch_size=config.train.batch_size,
                              grad_accum_steps=config.train.grad_accum_steps,
                              model_cfg=model_cfg)
  return Experiment(
      config=config, model_cfg=model_cfg, optim_cfg=OptimConfig.from_train_config(config.train),
      step_cfg=steps.StepConfig(grad_accum_steps=config.train.grad_accum_steps,
                                z_loss=config.train.z_loss),
      mesh=mesh, objective=objective)


def create_train_state(exp: Experiment, tx) -> tuple[nnx.GraphDef, steps.TrainState, Any]:
  """Initialises parameters and optimizer state directly sharded on the mesh."""
  seed = exp.config.seed
  abstract_model = nnx.eval_shape(lambda: build_model(exp.model_cfg, seed))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(exp.mesh, abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = sharding.matching_shardings(exp.mesh, abstract_opt, abstract_params, param_sh)
  replicated = NamedSharding(exp.mesh, P())
  state_sh = steps.TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                              rng=replicated)

  @functools.partial(jax.jit, out_shardings=state_sh)
  def init():
    params = nnx.state(build_model(exp.model_cfg, seed))
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params),
                            rng=jax.random.fold_in(jax.random.key(seed), 1))

  return graphdef, init(), state_sh


def compile_steps(exp: Experiment, graphdef, state_sh, tx, schedule):
  """The jitted train step (state donated) and eval step, with explicit shardings."""
  replicated = NamedSharding(exp.mesh, P())
  train_fn = functools.partial(steps.train_step, graphdef, objective=exp.objective, tx=tx,
                               schedule=schedule, cfg=exp.step_cfg)
  train = jax.jit(train_fn, in_shardings=(state_sh, None), out_shardings=(state_sh, replicated),
                  donate_argnums=(0,))
  eval_fn = functools.partial(steps.eval_step, graphdef, objective=exp.objective)
  evaluate = jax.jit(eval_fn, in_shardings=(state_sh.params, None),
                     out_shardings=replicated)
  return train, evaluate


def make_batches(exp: Experiment, split: str) -> Iterator[dict]:
  """This process's host batches for ``split`` ('train' endless, 'eval' a fixed set)."""
  c = exp.config
  if c.data.source != "synthetic":
    raise ValueError(f"data.source={c.data.source!r} is not available yet; use 'synthetic'.")
  seed = c.seed if split == "train" else c.seed + 1_000_003
  return SyntheticSource(
      c.objective, seed=seed, batch_size=c.train.batch_size, seq_len=c.train.seq_len,
      vocab_size=exp.model_cfg.vocab_size, process_index=jax.process_index(),
      process_count=jax.process_count())


def run_eval(exp: Experiment, evaluate, params) -> dict[str, float]:
  """Averages every metric over ``eval.steps`` eval batches (sums of numerators/denominators)."""
  nums: dict = {}
  dens: dict = {}
  batches = make_batches(exp, "eval")
  for _ in range(exp.config.eval.steps):
    batch = sharding.global_batch(exp.mesh, next(batches))
    n, d = jax.device_get(evaluate(params, batch))
    nums = {k: nums.get(k, 0.0) + float(v) for k, v in n.items()}
    dens = {k: dens.get(k, 0.0) + float(v) for k, v in d.items()}
  ratios = exp.objective.ratios(nums, dens)
  return {f"eval/{k}": float(v) for k, v in ratios.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None) -> dict[str, float]:
  """Trains for ``train.steps`` steps (on all, or the given, devices), logging and evaluating;
  returns the last metrics."""
  exp = make_experiment(config, devices)
  is_main = jax.process_index() == 0
  tx, schedule = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh):
    graphdef, state, state_sh = create_train_state(exp, tx)
    train, evaluate = compile_steps(exp, graphdef, state_sh, tx, schedule)
    return _loop(exp, state, train, evaluate, workdir, is_main)


def _loop(exp, state, train, evaluate, workdir, is_main) -> dict[str, float]:
  """Runs the steps; fetches step N's metrics after dispatching step N+1 (no host stall)."""
  c = exp.config
  writer = writers.MetricsWriter(workdir, is_main=is_main)
  batches = make_batches(exp, "train")
  meter = _Throughput(exp)
  start_step = int(jax.device_get(state.step))
  pending = None  # (step number, device metrics) not yet fetched
  last: dict[str, float] = {}
  for step in range(start_step + 1, c.train.steps + 1):
    batch = sharding.global_batch(exp.mesh, next(batches))
    state, device_metrics = train(state, batch)
    if pending is not None:
      last = _report(exp, pending, writer, meter, is_main)
    pending = (step, device_metrics)
    if c.eval.every_steps and (step % c.eval.every_steps == 0 or step == c.train.steps):
      last = _report(exp, pending, None, meter, is_main)
      pending = None
      eval_metrics = run_eval(exp, evaluate, state.params)
      last.update(eval_metrics)
      writer.write(step, last)  # train and eval metrics of this step in one JSON line
      writers.log_progress(f"eval at step {step}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in eval_metrics.items()), is_main)
      meter.restart()  # evaluation time is not training time
  if pending is not None:
    last = _report(exp, pending, writer, meter, is_main)
  return last


class _Throughput:
  """Step time, tokens/s and MFU over the steps since the last progress line."""

  def __init__(self, exp: Experiment):
    self.exp = exp
    self.flops_per_example = flops.train_flops_per_example(
        exp.model_cfg, exp.config.train.seq_len, exp.target_len)
    peak, source = flops.peak_flops_per_device()
    # Fake CPU devices share one host's cores, so the host's matmul rate is the peak.
    scale = jax.process_count() if jax.default_backend() == "cpu" else jax.device_count()
    self.peak = peak * scale
    logging.info("Model FLOPs per example %.4g; peak %.4g FLOP/s (%s)",
                 self.flops_per_example, self.peak, source)
    self.start, self.steps, self.tokens = None, 0, 0.0  # the first step compiles: not timed

  def restart(self) -> None:
    """Starts a new timing window now."""
    self.start, self.steps, self.tokens = time.perf_counter(), 0, 0.0

  def update(self, tokens: float) -> dict[str, float] | None:
    """Counts one fetched step; returns perf metrics for the window so far, if any."""
    if self.start is None:
      self.start = time.perf_counter()
      return None
    self.steps += 1
    self.tokens += tokens
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    step_time = elapsed / self.steps
    examples_per_sec = self.exp.config.train.batch_size / step_time
    return {"perf/step_time_s": step_time, "perf/tokens_per_sec": self.tokens / elapsed,
            "perf/mfu": self.flops_per_example * examples_per_sec / self.peak}


def _report(exp, pending, writer, meter, is_main) -> dict[str, float]:
  """Fetches one step's metrics, writes them (unless writer is None), prints progress, and
  acts on a non-finite loss."""
  step, device_metrics = pending
  values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
  finite = bool(values.pop("finite"))
  record = {f"train/{k}": v for k, v in values.items()}
  perf = meter.update(values["tokens"])
  total = exp.config.train.steps
  if perf is not None and (step % exp.config.train.log_every_steps == 0 or step == total):
    record.update(perf)
    writers.log_progress(writers.progress_line(
        step, total, record, perf["perf/step_time_s"], perf["perf/tokens_per_sec"],
        perf["perf/mfu"]), is_main)
    meter.restart()
  if writer is not None:
    writer.write(step, record)
  if not finite:
    message = (f"Non-finite loss or gradient at step {step} (loss={values['loss']}); the update "
               "was not applied.")
    if exp.config.train.on_nan == "stop":
      raise NonFiniteLossError(message + " Stopping with the last good state; set "
                               "--config.train.on_nan=skip to carry on, or lower "
                               "train.learning_rate.")
    logging.warning("%s Skipping it (train.on_nan=skip).", message)
  return record
