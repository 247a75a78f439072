"""Experiment tracking sinks beside ``metrics.jsonl``: Weights & Biases and TensorBoard.

A sink has ``write(step, metrics)``, ``truncate_after(step)`` and ``close(failed)``;
``writers.MetricsWriter`` fans every logged step out to the sinks ``open_sinks`` returns.
Only process 0 opens any. W&B runs offline (into ``WORKDIR/wandb/``, no network) unless an API
key is set or ``wandb.mode`` says otherwise (an online start says so first, and gives up
after ``wandb.init_timeout`` seconds, logging offline instead); the run id is kept in
``WORKDIR/wandb/run_id`` so a resumed training run continues the same W&B run. The API key
is read only to pick the mode: it is never logged, printed or written. W&B and TensorBoard
write to local disks only: for a remote workdir (gs://...) their files go to a local cache
folder (paths.local_cache, logged), while the run id stays in the workdir.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
from typing import Any, Iterator, Mapping

import ml_collections
from absl import logging

from lm_research import paths

WANDB_MODES = ("online", "offline", "disabled")
RUN_ID_FILE = os.path.join("wandb", "run_id")


def wandb_mode(config_mode: str, environ: Mapping[str, str] | None = None) -> str:
  """The W&B mode: the config's, else $WANDB_MODE, else online with an API key, else offline."""
  environ = os.environ if environ is None else environ
  mode = config_mode or environ.get("WANDB_MODE", "")
  if not mode:
    return "online" if environ.get("WANDB_API_KEY") else "offline"
  mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's older spellings
  if mode not in WANDB_MODES:
    raise ValueError(f"wandb.mode={mode!r} is not one of online, offline, disabled (or '' to "
                     "pick online/offline from WANDB_API_KEY).")
  return mode


def _scrub(text: str) -> str:
  """``text`` with the API key (if any) replaced, so an error message cannot leak it."""
  key = os.environ.get("WANDB_API_KEY", "")
  return text.replace(key, "<WANDB_API_KEY>") if key else text


class WandbSink:
  """Streams metrics to one W&B run (created, or resumed by the id stored in the workdir)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mode: str):
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banners would interleave with ours
    import wandb  # noqa: PLC0415  (slow import; only when tracking is on)
    self._wandb = wandb
    c = config.wandb
    self._init_timeout = float(c.init_timeout)
    root = _local_dir(c.dir or workdir, "tracking", "W&B")
    os.makedirs(root, exist_ok=True)
    run_id = _run_id(workdir)
    kwargs = dict(
        project=c.project or None, entity=c.entity or None,
        name=c.name or paths.as_path(workdir).name, group=c.group or None,
        tags=[t.strip() for t in c.tags.split(",") if t.strip()] or None, notes=c.notes or None,
        dir=root, id=run_id, resume="allow", config=config.to_dict())
    if mode == "online":  # the one step that waits on the network: say so before it does
      logging.info("W&B: connecting online (up to wandb.init_timeout=%gs, then logging offline)",
                   c.init_timeout)
    try:
      self.run = wandb.init(mode=mode, settings=self._settings(mode, c.system_metrics), **kwargs)
    except Exception as e:  # noqa: BLE001  (no network, bad key: never lose the training run)
      if "in use" in str(e):
        # A killed run's W&B service process can outlive it and keep holding the id.
        wandb.teardown()
        kwargs["id"] = _run_id(workdir, fresh=True)
        logging.warning("W&B run %s is still held by a killed process; continuing in a new W&B "
                        "run %s (same group).", run_id, kwargs["id"])
        self.run = wandb.init(mode=mode, settings=self._settings(mode, c.system_metrics),
                              **kwargs)
        logging.info("W&B run %s (%s) in %s", self.run.id, mode, root)
        return
      if mode != "online":
        raise
      logging.warning("W&B online init failed (%s); logging offline instead; upload later with "
                      "`wandb sync %s/wandb/offline-run-*`.",
                      _scrub(str(e).splitlines()[0] if str(e) else type(e).__name__), root)
      mode = "offline"
      wandb.teardown()  # the failed online run still holds its id in W&B's service process
      self.run = wandb.init(mode=mode, settings=self._settings(mode, c.system_metrics), **kwargs)
    logging.info("W&B run %s (%s) in %s", self.run.id, mode, root)

  def _settings(self, mode: str, system_metrics: bool):
    """Quiet, fast settings: no console capture, code or git snapshot; stats if asked."""
    return self._wandb.Settings(
        mode=mode, console="off", silent=True, save_code=False, disable_git=True,
        disable_job_creation=True, x_disable_stats=not system_metrics,
        x_disable_meta=not system_metrics, init_timeout=self._init_timeout)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Logs ``metrics`` at ``step`` (W&B drops steps below its current one, with a warning)."""
    self.run.log(dict(metrics), step=int(step))

  def truncate_after(self, step: int) -> None:
    """W&B cannot forget logged steps; a resumed run simply logs the later ones again."""
    del step

  def close(self, failed: bool = False) -> None:
    """Finishes the run (marked failed when training raised) and stops W&B's service, so the
    run's files are complete on disk and its id is free for a resumed run."""
    self.run.finish(exit_code=1 if failed else 0)
    self._wandb.teardown()


def _run_id(workdir: str, fresh: bool = False) -> str:
  """The W&B agent's run id, else the one stored in the workdir, else a new one (stored)."""
  path = paths.as_path(workdir) / RUN_ID_FILE
  run_id = "" if fresh else os.environ.get("WANDB_RUN_ID", "")  # `wandb agent` assigns the id
  if not run_id and not fresh and path.exists():
    run_id = path.read_text().strip()
  run_id = run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits)
                            for _ in range(8))  # W&B's own id format
  paths.write_text(path, run_id + "\n")
  return run_id


def _local_dir(path: str, what: str, tracker: str) -> str:
  """``path`` made absolute, or for a remote path a local cache folder (one log line)."""
  if not paths.is_remote(path):
    return os.path.abspath(path)
  local = paths.local_cache(path, what)
  logging.info("%s writes its files to %s: it needs a local disk, and %s is remote.", tracker,
               local, path)
  return local


class TensorBoardSink:
  """Scalars as TensorBoard event files (tensorboardX: no TensorFlow needed)."""

  def __init__(self, config: ml_collections.ConfigDict, logdir: str):
    self.logdir = logdir
    self.config_text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
    self.purge_step = None
    self._writer = None  # opened on first use, once truncate_after has said where to resume

  def _open(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # noqa: PLC0415
      self._writer = SummaryWriter(self.logdir, purge_step=self.purge_step)
      self._writer.add_text("config", "```\n" + self.config_text + "\n```", 0)
    return self._writer

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Adds one scalar per metric at ``step``."""
    writer = self._open()
    for key, value in metrics.items():
      writer.add_scalar(key, float(value), int(step))
    writer.flush()

  def truncate_after(self, step: int) -> None:
    """A resumed run hides the events logged after its checkpoint step (TensorBoard's purge)."""
    if step > 0 and self._writer is None:
      self.purge_step = step + 1

  def close(self, failed: bool = False) -> None:
    """Flushes and closes the event file."""
    del failed
    if self._writer is not None:
      self._writer.close()


def offline_records(run_dir: str) -> Iterator[Any]:
  """Every record (W&B's protobuf ``Record``) of an offline run's ``run-ID.wandb`` file."""
  from wandb.proto import wandb_internal_pb2  # noqa: PLC0415
  files = [f for f in os.listdir(run_dir) if f.endswith(".wandb")]
  if not files:
    raise ValueError(f"{run_dir} holds no .wandb file; give an offline-run-* folder.")
  with open(os.path.join(run_dir, files[0]), "rb") as f:
    data = f.read()
  # A LevelDB-style log: a 7-byte W&B header, then records in 32 KiB blocks, each chunk with a
  # 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last).
  pos, block, pending = 7, 32768, b""
  while pos + 7 <= len(data):
    left = block - pos % block
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    if left < 7 or kind == 0:  # block trailer padding
      pos += left
      continue
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record


def offline_history(run_dir: str) -> list[dict[str, Any]]:
  """The metrics an offline W&B run holds, one dict per log call (with '_step'): for checking
  a run before ``wandb sync`` uploads it."""
  return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
           for item in record.history.item}
          for record in offline_records(run_dir) if record.WhichOneof("record_type") == "history"]


def open_sinks(config: ml_collections.ConfigDict, workdir: str, is_main: bool = True) -> list:
  """The sinks the config asks for (none off process 0); a bad wandb.mode fails first."""
  mode = wandb_mode(config.wandb.mode)
  if not is_main:
    return []
  sinks: list[Any] = []
  if config.tensorboard.enabled:
    sinks.append(TensorBoardSink(config, _local_dir(
        config.tensorboard.dir or os.path.join(workdir, "tensorboard"), "tensorboard",
        "TensorBoard")))
  if mode != "disabled":
    try:
      sinks.append(WandbSink(config, workdir, mode))
    except Exception as e:  # noqa: BLE001  (a tracker never stops training)
      logging.warning("W&B could not start (%s); training goes on with metrics.jsonl%s only.",
                      _scrub(str(e).splitlines()[-1] if str(e) else type(e).__name__),
                      " and TensorBoard" if sinks else "")
  return sinks


def close_sinks(sinks: list) -> None:
  """Closes every sink; inside a ``finally`` that is unwinding an exception, marks it failed."""
  failed = sys.exc_info()[0] is not None
  for sink in sinks:
    try:
      sink.close(failed)
    except Exception as e:  # noqa: BLE001  (a tracker must not hide the training error)
      logging.warning("Closing %s failed: %s", type(sink).__name__, _scrub(str(e)))
