"""Restarts a command-line CPU run with glibc's huge-page malloc, which makes XLA CPU steps
faster.

XLA's CPU runtime mallocs each step's large temporary buffers afresh, and glibc maps them in
4 KiB pages, faulted in again every step; ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >=
2.35, read only at process start) maps them in 2 MiB pages. So the entry points call
``reexec_with_hugepages()`` first, before JAX is imported: on a machine with no GPU or TPU it
replaces the process once (same PID, arguments and directory) with the tunable added.
``LM_RESEARCH_HUGEPAGES=0`` keeps the process as it is.
"""

from __future__ import annotations

import glob
import os
import sys

SWITCH = "LM_RESEARCH_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Device files of accelerators JAX runs on: NVIDIA GPUs, TPUs (v2/v3 accel, v4+ VFIO).
ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def runs_on_cpu(environ: dict | None = None) -> bool:
  """Whether JAX will run on the CPU, decided without importing it: ``JAX_PLATFORMS`` when set
  (its first entry is the default backend), else no GPU or TPU device file present."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def glibc_version() -> tuple[int, int] | None:
  """The running C library's (major, minor) when it is glibc, else None."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):  # not Linux, or not glibc
    return None


def kernel_allows_hugepages(mode_file: str = _THP_MODE) -> bool:
  """Whether transparent huge pages may be used on request ('madvise' or 'always' mode)."""
  try:
    with open(mode_file) as f:
      mode = f.read()
  except OSError:
    return False
  return "[madvise]" in mode or "[always]" in mode


def active() -> bool:
  """Whether this process started with huge-page malloc."""
  return f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "").split(":")


def reexec_with_hugepages(environ: dict | None = None) -> None:
  """Restarts this command with huge-page malloc on a CPU run where it is available and not
  yet on (a GPU or TPU run's step buffers live in device memory: nothing to gain there)."""
  environ = os.environ if environ is None else environ
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (environ.get(SWITCH, "1") == "0" or TUNABLE in tunables or not runs_on_cpu(environ)
      or (glibc_version() or (0, 0)) < (2, 35) or not kernel_allows_hugepages()):
    return
  env = dict(environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
