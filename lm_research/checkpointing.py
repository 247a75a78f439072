"""Orbax checkpoints of the train state, plus each process's data-iterator position.

Layout of ``WORKDIR/checkpoints``:
  <step>/state      parameters, optimizer state, step, RNG (Orbax, async, any mesh)
  <step>/config     the resolved config (JSON)
  data/process_<i>/<step>.json   where process i's data iterator stood after <step>

Orbax writes a step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; a step that cannot be read is skipped with a
warning and the one before it is used. Old steps are deleted only after a new one commits.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves and restores (train state, data state) every ``every_steps`` steps, keeping ``keep``."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.data_dir = os.path.join(self.directory, "data", f"process_{jax.process_index()}")
    os.makedirs(self.data_dir, exist_ok=True)
    self._warn_incomplete()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "config"))

  def save(self, step: int, state: Any, data_state: dict | None, config: dict) -> None:
    """Starts an asynchronous save of ``state`` at ``step`` (returns before it is written)."""
    with open(os.path.join(self.data_dir, f"{step}.json"), "w") as f:
      json.dump(data_state, f)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)), force=True)
    self._prune_data_states()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict | None, int] | None:
    """The newest readable checkpoint as (state, data_state, step), or None if there is none.

    ``abstract_state`` carries the target shardings, so a checkpoint saved on one mesh is
    restored onto another. When steps exist but none can be read, this raises instead of
    returning None: starting afresh would train over (and prune) the run's checkpoints.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # noqa: BLE001  (any unreadable step: fall back to the older one)
        logging.warning("Checkpoint %s/%d is unreadable (%s: %s); trying the one before it.",
                        self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      return restored.state, self._read_data_state(step), step
    if steps:
      raise ValueError(
          f"No checkpoint in {self.directory} (steps {', '.join(map(str, steps))}) fits this "
          "run's state: rerun with the training run's config and flags (model, train.optimizer, "
          "train.ema_decay), or use a new --workdir.")
    return None

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's preemption sync point (TPU maintenance events) says to save and stop."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # noqa: BLE001  (no preemption service outside managed TPU setups)
      return False

  def _read_data_state(self, step: int) -> dict | None:
    path = os.path.join(self.data_dir, f"{step}.json")
    if not os.path.exists(path):
      logging.warning("No data-iterator state for step %d at %s; data restarts from its "
                      "beginning.", step, path)
      return None
    with open(path) as f:
      return json.load(f)

  def _prune_data_states(self) -> None:
    """Drops data states of steps Orbax no longer keeps (never the one being saved)."""
    keep = {str(s) for s in self.manager.all_steps()}
    names = sorted(os.listdir(self.data_dir), key=lambda n: int(n.split(".")[0]))
    for name in names[:-1]:  # the newest belongs to the save in flight
      if name.split(".")[0] not in keep:
        os.remove(os.path.join(self.data_dir, name))

  def _warn_incomplete(self) -> None:
    for name in sorted(os.listdir(self.directory)):
      if "tmp" in name:
        logging.warning("Skipping incomplete checkpoint %s (a save was interrupted).",
                        os.path.join(self.directory, name))


class PreemptionFlag:
  """Set by SIGTERM; the loop checks it at each step boundary, saves and exits cleanly."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def install(self) -> "PreemptionFlag":
    """Routes SIGTERM to this flag (main thread only; elsewhere it is a no-op)."""
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def uninstall(self) -> None:
    """Restores the previous SIGTERM handler."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def is_set(self) -> bool:
    return self.event.is_set()
