"""When a training run saves and stops early: a preemption notice every process agrees on.

One process: a Python SIGTERM handler sets a flag that the loop reads at each step boundary.
Several processes: ``jax.distributed.initialize`` starts JAX's preemption service, whose
notifier owns SIGTERM (a Python handler installed later would replace it, and the service
would never hear of the notice). A SIGTERM to any process reaches all of them through the
coordination service, which picks one step, the furthest any process has reached plus one;
``reached_preemption_sync_point`` is True at that step on every process, so all save the
same step and exit 0. It must be asked at every step, on every process, from the same start.
JAX counts from 0 when no step has been asked yet: a notice during a resumed run's start-up
(restore, compile) would pick step 1, long past, so steps are counted from this run's first.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Says at each step boundary whether every process should save now and stop."""

  def __init__(self):
    self.collective = jax.process_count() > 1
    self.event = threading.Event()
    self._previous = None
    self._first: int | None = None  # the first step asked about, counted as JAX's step 1

  def install(self) -> "Preemption":
    """Routes SIGTERM to this flag in a one-process run (main thread only); with several
    processes SIGTERM stays with JAX's preemption notifier."""
    if not self.collective and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def uninstall(self) -> None:
    """Restores the SIGTERM handler that ``install`` replaced."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def reached(self, step: int) -> bool:
    """True at the step where this run saves and stops (the same step on every process)."""
    if self.collective:
      self._first = step if self._first is None else self._first
      return bool(multihost_utils.reached_preemption_sync_point(step - self._first + 1))
    return self.event.is_set()
