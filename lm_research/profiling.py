"""A ``jax.profiler`` trace of a chosen range of training steps (``config.profile``).

The trace starts before step ``start_step`` is dispatched and stops once step
``start_step + num_steps - 1`` has finished on the device, so the range holds whole steps.
Only process 0 traces (one host's view is what one opens in TensorBoard or Perfetto).
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from lm_research import paths


class StepProfiler:
  """Starts and stops one trace at step boundaries; a no-op when ``profile.num_steps`` is 0."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, is_main: bool = True):
    p = config.profile
    if p.num_steps < 0:
      raise ValueError(f"profile.num_steps={p.num_steps} must be 0 (off) or positive.")
    if p.num_steps and not 1 <= p.start_step <= config.train.steps:
      raise ValueError(f"profile.start_step={p.start_step} must be a step of this run, 1 to "
                       f"train.steps={config.train.steps}.")
    self.enabled = bool(p.num_steps) and is_main
    self.first = p.start_step
    self.last = min(p.start_step + p.num_steps - 1, config.train.steps)
    self.logdir = os.path.join(workdir, "profile")
    if paths.is_remote(workdir):  # the trace is written with local file APIs
      self.logdir = paths.local_cache(workdir, "profile")
    self.active = False

  def before_step(self, step: int) -> None:
    """Starts the trace when ``step`` is the first profiled one."""
    if self.enabled and step == self.first and not self.active:
      os.makedirs(self.logdir, exist_ok=True)
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info("Profiling steps %d-%d into %s", self.first, self.last, self.logdir)

  def after_step(self, step: int, outputs) -> None:
    """Stops the trace after the last profiled step, once its ``outputs`` are computed."""
    if self.active and step >= self.last:
      jax.block_until_ready(outputs)  # dispatch is async: wait so the trace holds the step
      self.stop()

  def stop(self) -> None:
    """Ends a running trace (also on early exit: preemption or an error)."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      logging.info("Profile written to %s (open with TensorBoard's profile plugin or "
                   "https://ui.perfetto.dev).", self.logdir)
