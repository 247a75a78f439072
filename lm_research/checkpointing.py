"""Orbax checkpoints of the train state and of each process's data-iterator position.

Layout of ``WORKDIR/checkpoints``:
  <step>/state      parameters, optimizer state, step, RNG (Orbax, async, any mesh); a LoRA
                    run from init_from keeps its trained parameters only (train.initial_state)
  <step>/config     the resolved config (JSON)
  <step>/data/process_<i>-of-<n>.json   where process i of n's data iterator stood after <step>
                    (Grain's checkpoint handler)
  quarantine/<step>-<reason>     steps that could not be read, moved aside (never deleted)
  data/process_<i>/<step>.json   the data positions of workdirs saved before they moved into
                    the step (still read on resume; dropped once Orbax drops their step)

Orbax writes a step, data positions included, into a temporary directory and renames it when
every process has written its part, so a run killed mid-save leaves the previous checkpoint
intact and a committed step always has the data positions of its state. On restore, a step
whose stored shapes differ from the run's state is a config change (one error naming the
differing fields, nothing moved); a step that cannot be read is corrupt: a training run moves
it to quarantine/ and resumes from the newest readable step. A read-only Checkpointer (eval,
predict) writes nothing into checkpoints/ and takes no lock, so it can read a workdir a
training run is using.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from lm_research import paths
from lm_research.models.layout import flatten, unflatten

QUARANTINE = "quarantine"
DATA = "data"  # the step's item of data positions; also the old layout's folder beside steps
# ModelConfig and train fields whose change alters the saved state's shapes or structure.
_STATE_FIELDS = ("model.", "train.optimizer", "train.ema_decay", "train.lora.")
_FULL_DISK = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded")
_READ_ONLY = ("Read-only file system", "Permission denied")


def quiet_library_teardown() -> None:
  """Silences the asyncio teardown noise of a failed Orbax read or write (hundreds of
  'Event loop is closed' tracebacks from TensorStore callbacks that outlive Orbax's loop, and
  'Task exception was never retrieved'); the failure itself still raises, once."""
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  previous = sys.unraisablehook
  if getattr(previous, "_lm_research_quiet", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value):
      return
    previous(unraisable)

  hook._lm_research_quiet = True  # noqa: SLF001  (marks the hook as installed)
  sys.unraisablehook = hook


def _first_line(error: BaseException, limit: int = 160) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {(text[0] if text else '')[:limit]}"


def _name(path) -> str:
  """A pytree key path as Orbax names its arrays ('opt_state.1.0.mu.embeddings...')."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shapes(tree) -> dict[str, tuple | None]:
  """Each array's shape by name; None for PRNG keys (stored as raw uint32 data, not as typed
  keys)."""
  return {_name(path): None if jax.dtypes.issubdtype(getattr(leaf, "dtype", None) or "float32",
                                                     jax.dtypes.prng_key) else tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def _differing(stored: dict, wanted: dict) -> list[str]:
  """Array names in one tree only, or whose shapes differ (PRNG keys compare by name only)."""
  return sorted(set(stored) ^ set(wanted)) or sorted(
      k for k in stored if None not in (stored[k], wanted[k]) and stored[k] != wanted[k])


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


class _DataPosition:
  """A data-iterator state (a JSON-able dict) as Grain's checkpoint handler stores an
  iterator: ``get_state`` bytes, one file per process."""

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    """The state as the handler writes it."""
    return json.dumps(self.state).encode()

  def set_state(self, raw: bytes) -> None:
    """Takes the state the handler read."""
    self.state = json.loads(raw)

  def start_prefetch(self) -> None:
    """Called by the handler after a restore; the trainer's own iterator prefetches."""


class _Manager(ocp.CheckpointManager):
  """Orbax's manager without its own preemption check, which would ask JAX's sync point with
  other step numbers than the loop's (lm_research/preemption.py; the loop saves by itself)."""

  def reached_preemption(self, step: int) -> bool:
    """Never: preemption.Preemption decides."""
    return False


class Checkpointer:
  """Saves and restores (train state, data state) every ``every_steps`` steps, keeping ``keep``."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    quiet_library_teardown()
    self.directory = paths.resolve(os.path.join(workdir, "checkpoints"))  # local or gs://...
    self.path = paths.as_path(self.directory)
    self.legacy_data_dir = self.path / DATA / f"process_{jax.process_index()}"
    self.read_only = read_only
    self.manager = None
    if read_only and not self.path.is_dir():
      return  # nothing trained yet: restore_latest finds no step
    if not read_only and self.path.is_dir():
      self._warn_incomplete()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save and not read_only,
        create=not read_only, cleanup_tmp_directories=not read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                DATA: grain.checkpoint.CheckpointHandler()}
    self.manager = _Manager(self.path, options=options, item_handlers=handlers)

  # An nnx filter of the parameters to save (None: all). train.initial_state sets it for a LoRA
  # run from init_from, whose frozen base is init_from's to keep, not a copy in every step.
  params_filter = None

  def save(self, step: int, state: Any, data_state: dict | None, config: dict) -> None:
    """Starts an asynchronous save of ``state`` at ``step`` (returns before it is written)."""
    if self.params_filter is not None:
      state = state.replace(params=nnx.filter_state(state.params, self.params_filter))
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
          **{DATA: grain.checkpoint.CheckpointSave(_DataPosition(data_state))}), force=True)
      self._prune_legacy_data_states()
    except Exception as e:  # noqa: BLE001  (a full or read-only disk becomes one line)
      raise self._write_error(e) from None

  def restore_latest(self, abstract_state: Any,
                     config: dict | None = None) -> tuple[Any, dict | None, int] | None:
    """The newest readable checkpoint as (state, data_state, step), or None if there is none.

    ``abstract_state`` carries the target shardings, so a checkpoint saved on one mesh is
    restored onto another. A step saved by another model or optimizer raises (naming the
    differing ``config`` fields); an unreadable one is skipped (a writer moves it to
    quarantine/). When steps existed but none can be read, this raises instead of returning
    None: starting afresh would train over the run's metrics.
    """
    steps = sorted(self.manager.all_steps(), reverse=True) if self.manager else []
    unreadable = []
    for step in steps:
      try:
        stored = _shapes(self.manager.item_metadata(step)["state"])
      except Exception as e:  # noqa: BLE001  (any unreadable metadata: the step is corrupt)
        unreadable.append(self._set_aside(step, "unreadable-metadata", e))
        continue
      wanted = _shapes(abstract_state)
      if _differing(stored, wanted):
        raise ValueError(self._mismatch(step, stored, wanted, config))
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # noqa: BLE001  (shapes fit, data does not read: corrupt)
        unreadable.append(self._set_aside(step, "unreadable-arrays", e))
        continue
      return restored.state, None if self.read_only else self._read_data_state(step), step
    quarantined = self._quarantined()
    if unreadable or quarantined:
      where = (f"moved to {self.path / QUARANTINE}" if not self.read_only
               else "left in place")
      raise ValueError(
          f"no readable checkpoint in {self.directory} (unreadable steps "
          f"{', '.join(unreadable or quarantined)}, {where}); use a new --workdir, or move "
          "checkpoints/ and metrics.jsonl aside to start this one over")
    return None

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(e) from None

  def close(self) -> None:
    """Waits for pending saves and releases the manager (only logs when already failing)."""
    if self.manager is None:
      return
    failing = sys.exc_info()[0] is not None  # inside a finally that unwinds an error
    try:
      self.manager.wait_until_finished()
      self.manager.close()
    except Exception as e:  # noqa: BLE001
      if not failing:
        raise self._write_error(e) from None
      logging.warning("Closing %s: %s", self.directory, _first_line(e))

  def _set_aside(self, step: int, reason: str, error: Exception) -> str:
    """Moves an unreadable step to quarantine/ (a writer on process 0) and says so in one line;
    returns the step's name."""
    source = self.path / str(step)
    if self.read_only or jax.process_index() != 0:
      logging.warning("Checkpoint %s is unreadable (%s); using the one before it.", source,
                      _first_line(error))
      return str(step)
    target = self.path / QUARANTINE / f"{step}-{reason}"
    n = 1
    while target.exists():
      target = self.path / QUARANTINE / f"{step}-{reason}.{n}"
      n += 1
    paths.move(source, target)
    self.manager.reload()
    logging.warning("Checkpoint %s is unreadable (%s); moved it to %s and resuming from the "
                    "newest readable step.", source, _first_line(error), target)
    return str(step)

  def _quarantined(self) -> list[str]:
    path = self.path / QUARANTINE
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

  def _mismatch(self, step: int, stored: dict, wanted: dict, config: dict | None) -> str:
    """The config-change error: which fields (or arrays) differ from the saved run's."""
    changed = []
    saved_path = self.path / str(step) / "config" / "metadata"
    if config is not None and saved_path.exists():
      saved, now = _flat(json.loads(saved_path.read_text())), _flat(config)
      # Saved configs hold resolved values ('auto' made 'xla'); those are not changes.
      changed = [f"{k}={saved.get(k)!r} (this run: {now.get(k)!r})"
                 for k in sorted(set(saved) | set(now))
                 if k.startswith(_STATE_FIELDS) and saved.get(k) != now.get(k)
                 and not {saved.get(k), now.get(k)} & {None, "auto", ""}]
    if not changed:
      changed = [f"array {k}: saved {stored.get(k)}, this run {wanted.get(k)}"
                 for k in _differing(stored, wanted)]
    return (f"checkpoint {self.directory}/{step} was saved by another model or optimizer "
            f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}): rerun with the "
            "training run's config and flags, or use a new --workdir for this config")

  def _write_error(self, error: Exception) -> Exception:
    """A full or read-only disk as a one-line ValueError; any other error unchanged."""
    text = str(error)
    if any(s in text for s in _FULL_DISK):
      return ValueError(f"no space left on the disk of {self.directory}: free some space (or "
                        "use a --workdir on a bigger disk), then rerun the same command; it "
                        "resumes from the newest committed checkpoint")
    if any(s in text for s in _READ_ONLY):
      return ValueError(f"cannot write checkpoints in {self.directory} (read-only filesystem "
                        "or permissions); pick a writable --workdir")
    return error

  def _read_data_state(self, step: int) -> dict | None:
    """This process's data position at ``step``: the step's data item, else (a workdir saved
    before positions moved into the step) data/process_<i>/<step>.json."""
    item = self.path / str(step) / DATA
    if item.is_dir():
      mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      if not (item / mine).exists():
        saved = ", ".join(sorted(p.name for p in item.iterdir() if p.name.endswith(".json")))
        raise ValueError(f"checkpoint {self.directory}/{step} holds the data positions of "
                         f"another process count ({saved}), not {mine}: rerun with the saved "
                         "run's process count, or use a new --workdir")
      return self.manager.restore(step, args=ocp.args.Composite(
          **{DATA: grain.checkpoint.CheckpointRestore(_DataPosition())}))[DATA].state
    path = self.legacy_data_dir / f"{step}.json"
    if not path.exists():
      logging.warning("No data-iterator state for step %d at %s; data restarts from its "
                      "beginning.", step, path)
      return None
    return json.loads(path.read_text())

  def _prune_legacy_data_states(self) -> None:
    """Drops the old layout's data positions of steps Orbax no longer keeps, then its folder
    once empty."""
    if not self.legacy_data_dir.is_dir():
      return
    keep = {f"{s}.json" for s in self.manager.all_steps()}
    for path in self.legacy_data_dir.iterdir():
      if path.name not in keep:
        path.unlink()
    for folder in (self.legacy_data_dir, self.legacy_data_dir.parent):
      if any(folder.iterdir()):
        return  # not empty yet (kept steps, or another process's positions)
      folder.rmdir()

  def _warn_incomplete(self) -> None:
    for path in sorted(self.path.iterdir()):
      if "tmp" in path.name:
        logging.warning("Skipping incomplete checkpoint %s (a save was interrupted).", path)
# ------------------------------------------------- reading a checkpoint without a training run


def latest_step(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) of a workdir, its checkpoints/ folder or one step folder."""
  paths.check_filesystem(path)
  if not paths.exists(path):
    raise ValueError(f"{path!r} does not exist; give a workdir, a checkpoint or a Hugging Face "
                     "folder (config.json + *.safetensors).")
  directory = paths.as_path(path)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  if directory.name.isdigit() and (directory / "state").is_dir():
    return os.fspath(directory.parent), int(directory.name)
  steps = _steps(directory) if directory.is_dir() else []
  if not steps:
    raise ValueError(f"{path!r} holds no checkpoint; point it at a workdir, its checkpoints/ "
                     "folder, a step folder, or a Hugging Face folder.")
  return os.fspath(directory), max(steps)


def _steps(directory) -> list[int]:
  """The step numbers of the step folders in a checkpoints/ directory."""
  return [int(p.name) for p in paths.as_path(directory).iterdir() if p.name.isdigit()]


def _read_latest(path: str, **items) -> tuple[Any, str, int]:
  """(restored items, checkpoints directory, step) of the latest step at ``path``."""
  directory, step = latest_step(path)
  manager = ocp.CheckpointManager(paths.as_path(directory), item_names=("state", "config"))
  try:
    return manager.restore(step, args=ocp.args.Composite(**items)), directory, step
  finally:
    manager.close()


def read_config(path: str) -> dict:
  """The resolved experiment config saved with the newest checkpoint at ``path`` whose config
  can be read (a corrupt latest step is left for a training run's restore to set aside)."""
  directory, latest = latest_step(path)
  steps = sorted((n for n in _steps(directory) if n <= latest), reverse=True)
  manager = ocp.CheckpointManager(paths.as_path(directory), item_names=("state", "config"))
  try:
    for step in steps:
      try:
        return dict(manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore())).config)
      except Exception as e:  # noqa: BLE001  (an unreadable step: try the one before it)
        logging.warning("The config of checkpoint %s/%d is unreadable (%s); trying the one "
                        "before it.", directory, step, _first_line(e))
  finally:
    manager.close()
  raise ValueError(f"No checkpoint in {directory} has a readable config; move the corrupt "
                   "steps aside or point at another checkpoint.")


def _plain(tree: Any) -> Any:
  """Orbax's raw view of an nnx.State -> plain dict: {'value': x} leaves, '0' keys -> 0."""
  if isinstance(tree, dict):
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
      return tree["value"]
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _plain(v)
            for k, v in tree.items()}
  return tree


def read_params(path: str) -> dict:
  """The parameters of the latest checkpoint at ``path`` as a plain tree (layers as saved):
  the moving average of the weights when the run kept one (train.ema_decay), the weights it
  evaluated with, else the trained weights."""
  restored, directory, step = _read_latest(path, state=ocp.args.StandardRestore())
  logging.info("read parameters of checkpoint %s/%d", directory, step)
  averages = [part["params_ema"] for part in restored.state.get("opt_state") or []
              if isinstance(part, dict) and "params_ema" in part]
  params = flatten(_plain(restored.state["params"]))
  # The average covers what trained: every weight, or (train.lora) the adapters and head only.
  return unflatten({**params, **flatten(_plain(averages[0]))} if averages else params)

