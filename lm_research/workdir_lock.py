"""One writer per workdir: the lock a training run's process 0 holds for the life of the run.

``WORKDIR/lock`` is flock()ed while the run lives, so the kernel releases it on any exit
(SIGKILL included), and it names its holder (pid, host, process start time, command). A second
run on the same workdir stops at once with one line naming the holder. The file a killed run
leaves behind is taken over with one log line when its pid on this host is gone (or now belongs
to another process); one naming another host is left alone, since its pid cannot be checked from
here. Eval and predict only read committed checkpoints and take no lock. A remote workdir
(gs://...) takes no lock either: flock() locks files on this machine's disks only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from lm_research import paths

LOCK_FILE = "lock"


def prepare_workdir(workdir: str) -> None:
  """Creates ``workdir``; a path that is a file, lies under a file or is read-only is a
  one-line ValueError (nothing is written). A remote workdir needs its filesystem installed."""
  if paths.is_remote(workdir):
    paths.check_filesystem(workdir)
    return  # an object store has no folders to create, nor permissions to check up front
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    why = {errno.EEXIST: "is a file, not a directory",
           errno.ENOTDIR: "lies under a file, not a directory"}.get(
               e.errno, f"cannot be created ({e.strerror})")
    raise ValueError(f"--workdir={workdir} {why}; pick another --workdir") from None
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file, not a directory; pick another --workdir")
  if not os.access(workdir, os.W_OK):
    raise ValueError(f"--workdir={workdir} is not writable (read-only filesystem or "
                     "permissions); pick a writable --workdir")


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def holder_is_gone(holder: dict) -> bool:
  """Whether the process a lock file names is gone (only decidable on this host)."""
  if holder.get("host") != socket.gethostname():
    return False
  pid = int(holder.get("pid", 0))
  if pid <= 0 or not _alive(pid):
    return True
  started = holder.get("start_time")
  return started is not None and _start_time(pid) not in (None, started)


def describe(holder: dict) -> str:
  """'pid 123 on host h (since 2026-12-03 14:00:00 UTC: python -m lm_research.main ...)'."""
  since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0)))
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {since}: "
          f"{holder.get('command', '?')[:120]})")


def _read(fd: int) -> dict:
  data = os.pread(fd, 65536, 0)
  try:
    return json.loads(data) if data.strip() else {}
  except ValueError:
    return {"pid": "?", "host": "?", "command": "an unreadable lock file"}


class WorkdirLock:
  """The exclusive lock on one workdir (``acquire`` raises a one-line ValueError when busy)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock (creating the workdir), or raises naming the run that holds it."""
    prepare_workdir(self.workdir)
    if paths.is_remote(self.workdir):
      logging.info("No lock on %s: flock() works on local disks only; run one training job per "
                   "remote workdir.", self.workdir)
      return self
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ValueError(f"cannot write {self.path} ({e.strerror}); pick a writable "
                       "--workdir") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      raise ValueError(f"--workdir={self.workdir} is in use by {describe(holder)}; wait for "
                       "it to finish or stop it, or use another --workdir") from None
    previous = _read(fd)
    if previous and not holder_is_gone(previous):
      os.close(fd)
      raise ValueError(f"--workdir={self.workdir} is locked by {describe(previous)}; if no run "
                       f"is alive there, delete {self.path} and rerun")
    if previous:
      logging.warning("Taking over %s: its holder, %s, is gone.", self.path, describe(previous))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_time":
          _start_time(os.getpid()), "time": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file and unlocks it (a no-op when not held)."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # an empty file: nobody to take over from
    except OSError:
      pass  # a full or read-only disk: the next run still sees this pid gone
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
