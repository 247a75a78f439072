"""The training loop: resume or initialise, step, log one step behind, evaluate, checkpoint.

Resume order: the workdir's latest readable checkpoint -> ``init_from`` (pretrained weights,
fresh optimizer) -> fresh initialisation. SIGTERM (to any process of the run) saves at a step
boundary all processes agree on (lm_research/preemption.py) and exits 0; rerunning the same
command continues exactly where it stopped.
A training run holds WORKDIR/lock for its life (one writer per workdir; a gs:// workdir has
none: lm_research/workdir_lock.py) and writes WORKDIR/config.json only once its state is
restored or initialised, so a run refused for a config change leaves the workdir's config as
it was. Eval and predict read the latest
committed checkpoint without the lock and never write into checkpoints/.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from lm_research import experiment
from lm_research import metrics as flops
from lm_research import paths, profiling, sharding, tracking, workdir_lock, writers
from lm_research.checkpointing import Checkpointer
from lm_research.experiment import Experiment
from lm_research.models import lora
from lm_research.optim import inference_params, make_optimizer
from lm_research.preemption import Preemption


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/Inf and train.on_nan is 'stop'."""


def initial_state(exp: Experiment, tx, ckpt: Checkpointer):
  """(graphdef, state, shardings, data state, step) from a checkpoint, init_from, or scratch.

  A LoRA run from init_from checkpoints only what it trains (adapters, task head): resuming
  loads its frozen base from init_from again, as its first start did (a LoRA run over a random
  base, init_from='', checkpoints its whole state).
  """
  graphdef, abstract_state, state_sh, init = experiment.state_layout(exp, tx)
  trained_only = bool(exp.model_cfg.lora.rank and exp.config.init_from)
  if trained_only:
    ckpt.params_filter = lora.is_trainable
    abstract_state = abstract_state.replace(
        params=nnx.filter_state(abstract_state.params, lora.is_trainable))
  restored = ckpt.restore_latest(abstract_state, exp.config.to_dict())
  if restored is not None:
    state, data_state, step = restored
    if trained_only:
      from lm_research import pretrained  # noqa: PLC0415  (pulls in the Hugging Face converter)
      pretrained.check_base(exp.config.init_from, f"{ckpt.directory}/{step}")
      _, frozen = lora.split(_fresh_state(exp, tx, graphdef, init, state_sh).params,
                             lora.is_trainable)
      state = state.replace(params=lora.join(state.params, frozen))
    logging.info("Resuming from %s/%d.", ckpt.directory, step)
    return graphdef, state, state_sh, data_state, step
  return graphdef, _fresh_state(exp, tx, graphdef, init, state_sh), state_sh, None, 0


def _fresh_state(exp: Experiment, tx, graphdef, init, state_sh):
  """The state at step 0: initialised, with init_from's weights loaded (if any)."""
  state = init()
  if exp.config.init_from:
    from lm_research import pretrained  # noqa: PLC0415  (pulls in the Hugging Face converter)
    params = pretrained.load_into(exp.config.init_from, graphdef, state.params, exp.model_cfg)
    # The optimizer state starts from the loaded weights (train.ema_decay's average does).
    state = state.replace(params=params, opt_state=jax.jit(
        tx.init, out_shardings=state_sh.opt_state)(params))
  return state


@contextlib.contextmanager
def _sole_writer(workdir: str):
  """Holds WORKDIR/lock on process 0 for the block; a busy or unwritable workdir raises on
  every process (the others would otherwise wait for process 0 in their first collective)."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.WorkdirLock(workdir).acquire()
    except ValueError as e:
      error = e
  if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(
      np.int32(error is None)):
    raise error or ValueError(f"process 0 could not take {workdir}/lock (its log says why)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The resolved config as WORKDIR/config.json (process 0; replaced whole, never half-written)."""
  if jax.process_index() != 0:
    return
  paths.write_text(os.path.join(workdir, "config.json"),
                   json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None) -> dict[str, float]:
  """Trains to ``train.steps`` (resuming from WORKDIR/checkpoints); returns the last metrics."""
  with _sole_writer(workdir):
    return _train(config, workdir, devices)


def _train(config: ml_collections.ConfigDict, workdir: str, devices: list | None):
  """train_and_evaluate's body, run while holding the workdir's lock."""
  exp = experiment.make_experiment(config, devices, workdir)
  config = exp.config  # the resolved config (train.steps from train.epochs, labels, body)
  logging.info("Training to train.steps=%d in %s.", config.train.steps, workdir)
  tx, schedule = make_optimizer(exp.optim_cfg)
  is_main = jax.process_index() == 0
  profiler = profiling.StepProfiler(config, workdir, is_main)
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep)
  sinks = []
  preempted = Preemption().install()
  try:
    sinks = tracking.open_sinks(config, workdir, is_main)  # W&B, TensorBoard (process 0)
    with sharding.active_mesh(exp.mesh):
      graphdef, state, state_sh, data_state, start = initial_state(exp, tx, ckpt)
      write_config(config, workdir)  # the state fits this config: record it
      train, evaluate = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
      return _loop(exp, graphdef, state, data_state, start, train, evaluate, workdir, ckpt,
                   preempted, sinks, profiler)
  finally:
    preempted.uninstall()
    ckpt.close()
    profiler.stop()
    tracking.close_sinks(sinks)  # marks the W&B run failed if training raised


def _weights(state):
  """The parameters evaluation and predict use (train.ema_decay's average when it is on)."""
  return inference_params(state.params, state.opt_state)


def trained_state(exp: Experiment, tx, ckpt: Checkpointer):
  """(graphdef, state, shardings, step) of the latest checkpoint, or of init_from's weights."""
  graphdef, state, state_sh, _, step = initial_state(exp, tx, ckpt)
  if step == 0 and not exp.config.init_from:
    raise ValueError(f"No checkpoint in {ckpt.directory} and no init_from: train first, "
                     "or pass --config.init_from=PATH.")
  return graphdef, state, state_sh, step


def evaluate_only(config: ml_collections.ConfigDict, workdir: str,
                  devices: list | None = None) -> dict[str, float]:
  """``--mode=eval``: evaluates the latest checkpoint (or init_from weights) and logs it."""
  exp = experiment.make_experiment(config, devices, workdir)
  tx, schedule = make_optimizer(exp.optim_cfg)
  ckpt = Checkpointer(workdir, read_only=True)  # a training run may be using the workdir
  try:
    with sharding.active_mesh(exp.mesh):
      graphdef, state, state_sh, step = trained_state(exp, tx, ckpt)
      _, evaluate = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
      metrics = experiment.run_eval(exp, evaluate, _weights(state), graphdef, step)
  finally:
    ckpt.close()
  try:  # appended only when no training run is writing metrics.jsonl (steps stay in order)
    with _sole_writer(workdir):
      writers.MetricsWriter(workdir, is_main=jax.process_index() == 0).write(step, metrics)
  except ValueError as e:
    logging.warning("%s; this evaluation is printed but not added to metrics.jsonl.", e)
  writers.log_progress(f"eval at step {step}: " + ", ".join(
      f"{k} {v:.4f}" for k, v in metrics.items()), jax.process_index() == 0)
  return metrics


def predict_only(config: ml_collections.ConfigDict, workdir: str,
                 devices: list | None = None) -> str:
  """``--mode=predict``: applies the latest checkpoint to ``predict.input``; returns the
  output path (lm_research/predict.py)."""
  from lm_research import predict  # noqa: PLC0415  (decoding is imported only when needed)
  if not config.predict.input:
    raise ValueError("--mode=predict needs --config.predict.input=FILE (lines, .tsv or .jsonl)")
  exp = experiment.make_experiment(config, devices, workdir)
  predict.prediction_kind(exp)  # a run with nothing to predict fails before any restoring
  tx, _ = make_optimizer(exp.optim_cfg)
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    with sharding.active_mesh(exp.mesh):
      graphdef, state, _, step = trained_state(exp, tx, ckpt)
      return predict.run(exp, graphdef, _weights(state), step)
  finally:
    ckpt.close()


def _loop(exp, graphdef, state, data_state, start_step, train, evaluate, workdir, ckpt,
          preempted, sinks=(), profiler=None) -> dict[str, float]:
  """Runs the steps; fetches step N's metrics after dispatching step N+1 (no host stall)."""
  c = exp.config
  is_main = jax.process_index() == 0
  writer = writers.MetricsWriter(workdir, is_main=is_main, sinks=sinks)
  writer.truncate_after(start_step)  # steps after the checkpoint are logged again below
  batches = experiment.make_batches(exp, "train")
  if data_state is not None:
    batches.set_state(data_state)
  meter = _Throughput(exp)
  pending = None  # (step number, device metrics) not yet fetched
  last: dict[str, float] = {}
  if start_step == 0 and c.eval.every_steps:  # the untrained baseline, for comparison
    last = experiment.run_eval(exp, evaluate, _weights(state), graphdef, 0)
    writer.write(0, last)
  for step in range(start_step + 1, c.train.steps + 1):
    batch = sharding.global_batch(exp.mesh, next(batches))
    if profiler:
      profiler.before_step(step)
    state, device_metrics = train(state, batch)
    if profiler:
      profiler.after_step(step, device_metrics)
    if pending is not None:
      last = _report(exp, pending, writer, meter)
    pending = (step, device_metrics)
    final = step == c.train.steps
    if c.eval.every_steps and (step % c.eval.every_steps == 0 or final):
      last = _report(exp, pending, None, meter)
      pending = None
      last.update(experiment.run_eval(exp, evaluate, _weights(state), graphdef, step))
      writer.write(step, last)  # train and eval metrics of this step in one JSON line
      writers.log_progress(f"eval at step {step}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in last.items() if k.startswith("eval/")), is_main)
      meter.restart()  # evaluation time is not training time
    stop = preempted.reached(step)  # asked at every step: all processes stop together
    every = c.checkpoint.every_steps
    if final or stop or (every and step % every == 0):
      if pending is not None:  # a step's metrics are on disk before its checkpoint
        last = _report(exp, pending, writer, meter)
        pending = None
      ckpt.save(step, state, batches.get_state(), c.to_dict())
    if stop:
      ckpt.wait()
      logging.warning("Preempted: saved a checkpoint at step %d in %s; rerun the same command "
                      "to continue.", step, ckpt.directory)
      return last
  if pending is not None:
    last = _report(exp, pending, writer, meter)
  return last


class _Throughput:
  """Step time, tokens/s and MFU over the steps since the last progress line.

  MFU counts the model FLOPs of the real tokens (padding excluded): a batch cut to a bucket
  or padded to train.seq_len does no more useful work than its tokens.
  """

  def __init__(self, exp: Experiment):
    self.exp = exp
    self.flops_per_example = exp.train_flops_per_example()
    self.flops_per_token = self.flops_per_example / (exp.config.train.seq_len + exp.target_len)
    model_cfg = exp.model_cfg.resolved()  # the dtype and precision this backend computes in
    peak, source = flops.peak_flops_per_device(model_cfg.dtype, model_cfg.matmul_precision)
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
    tokens_per_sec = self.tokens / elapsed
    return {"perf/step_time_s": elapsed / self.steps, "perf/tokens_per_sec": tokens_per_sec,
            "perf/mfu": self.flops_per_token * tokens_per_sec / self.peak}


def _report(exp, pending, writer, meter) -> dict[str, float]:
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
        perf["perf/mfu"]), jax.process_index() == 0)
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
