"""The huge-page malloc restart: when it execs, with what, and that the real exec takes effect."""

import os
import subprocess
import sys

import pytest

from lm_research import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def execs(monkeypatch):
  """Records os.execve calls instead of replacing the test process; glibc and THP available."""
  calls = []
  monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
  monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
  monkeypatch.setattr(hugepages, "kernel_allows_hugepages", lambda: True)
  monkeypatch.setattr(hugepages, "ACCELERATOR_DEVICES", ())  # a CPU-only machine
  return calls


def test_restarts_once_with_the_tunable_added(execs, monkeypatch):
  monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "lm_research.main", "--config=x.py"])
  hugepages.reexec_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
  (path, argv, env), = execs
  assert path == sys.executable
  assert argv == [sys.executable, "-m", "lm_research.main", "--config=x.py"]
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                 "HOME": "/h"}
  hugepages.reexec_with_hugepages(env)  # the restarted process goes on as it is
  assert len(execs) == 1


@pytest.mark.parametrize("environ", [
    {"LM_RESEARCH_HUGEPAGES": "0"},               # switched off by the user
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user chose the setting
])
def test_leaves_the_process_alone_when_told(execs, environ):
  hugepages.reexec_with_hugepages(environ)
  assert execs == []


def test_leaves_the_process_alone_without_glibc_or_thp(execs, monkeypatch):
  monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 31))  # before the tunable
  hugepages.reexec_with_hugepages({})
  monkeypatch.setattr(hugepages, "glibc_version", lambda: None)     # musl, macOS
  hugepages.reexec_with_hugepages({})
  monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
  monkeypatch.setattr(hugepages, "kernel_allows_hugepages", lambda: False)
  hugepages.reexec_with_hugepages({})
  assert execs == []


@pytest.mark.parametrize("mode,allowed", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", True),
    ("always madvise [never]\n", False)])
def test_kernel_mode(tmp_path, mode, allowed):
  path = tmp_path / "enabled"
  path.write_text(mode)
  assert hugepages.kernel_allows_hugepages(str(path)) is allowed
  assert hugepages.kernel_allows_hugepages(str(tmp_path / "missing")) is False


def test_real_restart_keeps_arguments_and_sets_the_tunable():
  if (hugepages.glibc_version() or (0, 0)) < (2, 35) or not hugepages.kernel_allows_hugepages():
    pytest.skip("needs glibc >= 2.35 and transparent huge pages")
  script = ("import sys, os; from lm_research import hugepages; "
            "print('start', flush=True); hugepages.reexec_with_hugepages(); "
            "print(sys.argv[1:], hugepages.active(), os.environ['GLIBC_TUNABLES'])")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
  out = subprocess.run([sys.executable, "-c", script, "a", "--b=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  # Printed twice: before the exec, then once more by the restarted process.
  assert out == ["start", "start", "['a', '--b=1'] True glibc.malloc.hugetlb=1"]


@pytest.mark.parametrize("environ,device_files,on_cpu", [
    ({}, [], True),                                   # no accelerator device files
    ({}, ["nvidia0"], False),                         # an NVIDIA GPU
    ({}, ["accel0"], False),                          # a TPU v2/v3 VM
    ({"JAX_PLATFORMS": "cpu"}, ["nvidia0"], True),    # told to run on the CPU anyway
    ({"JAX_PLATFORMS": "cuda,cpu"}, [], False),       # the first platform is the default
    ({"JAX_PLATFORMS": "tpu"}, [], False),
])
def test_runs_on_cpu_decides_without_jax(tmp_path, monkeypatch, environ, device_files, on_cpu):
  for name in device_files:
    (tmp_path / name).touch()
  monkeypatch.setattr(hugepages, "ACCELERATOR_DEVICES",
                      (str(tmp_path / "nvidia[0-9]*"), str(tmp_path / "accel[0-9]*")))
  assert hugepages.runs_on_cpu(environ) is on_cpu


def test_accelerator_runs_are_not_restarted(execs, monkeypatch):
  """A GPU or TPU run keeps its process: its step buffers are device memory, not malloc's."""
  hugepages.reexec_with_hugepages({"JAX_PLATFORMS": "cuda"})
  hugepages.reexec_with_hugepages({"JAX_PLATFORMS": "tpu"})
  assert execs == []
  hugepages.reexec_with_hugepages({"JAX_PLATFORMS": "cpu"})
  assert len(execs) == 1


def test_deciding_does_not_import_jax():
  script = ("import sys; from lm_research import hugepages; hugepages.runs_on_cpu(); "
            "print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "False"
