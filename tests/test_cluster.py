"""Cluster start-up: the environments JAX detects, the jax.distributed call, its log line and
its failure line (jax.distributed.initialize replaced by a recorder)."""

import importlib.util

import jax
import pytest
from absl import logging
from jax._src import clusters

from lm_research import cluster

SLURM = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
_WATCHED = [*SLURM, "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
            "TPU_SKIP_MDS_QUERY", "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX"]


@pytest.fixture
def calls(monkeypatch):
  """jax.distributed.initialize's calls, recorded instead of made; no cluster variables set."""
  for key in _WATCHED:
    monkeypatch.delenv(key, raising=False)
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: made.append((a, k)))
  return made


@pytest.mark.parametrize("env, name", [
    ({}, None),
    (SLURM, "SLURM"),
    ({"SLURM_JOB_ID": "42"}, None),  # an salloc shell outside srun: no task of a job step
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"}, "Open MPI"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),  # any pod; not one of a Job's processes
    ({"TPU_WORKER_HOSTNAMES": "w-0,w-1"}, None),  # the variable without a TPU
])
def test_detect_without_tpu(env, name, monkeypatch):
  """The table names what JAX would detect (no TPU chip here)."""
  monkeypatch.setattr(cluster, "_tpu_host", lambda: False)
  assert cluster.detect(env) == name


@pytest.mark.parametrize("env, name", [
    ({}, "Cloud TPU VM"), ({"TPU_WORKER_HOSTNAMES": "w-0,w-1"}, "GKE TPU"),
    ({"TPU_SKIP_MDS_QUERY": "1"}, None), ({**SLURM, "TPU_WORKER_HOSTNAMES": "w-0"}, "SLURM")])
def test_detect_on_a_tpu_host(env, name, monkeypatch):
  """On a TPU host: GKE's worker list first, else the VM's metadata, unless turned off; JAX
  tries SLURM before either."""
  monkeypatch.setattr(cluster, "_tpu_host", lambda: True)
  assert cluster.detect(env) == name


def test_kubernetes_job_needs_the_kubernetes_package():
  """An indexed Job's pod is detected only where JAX can query the API (package installed)."""
  env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}
  expected = "Kubernetes Job" if importlib.util.find_spec("kubernetes") else None
  assert cluster.detect(env) == expected


@pytest.mark.parametrize("env", [{}, SLURM, {"SLURM_JOB_ID": "42"},
                                 {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1"}])
def test_detect_agrees_with_jax(env, calls, monkeypatch):
  """Where no TPU or Kubernetes is involved, detect() finds a cluster exactly when one of
  JAX's own cluster types says its environment is present."""
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  jax_detects = any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types  # noqa: SLF001
                    if not c.opt_in_only_method)
  assert (cluster.detect() is not None) == jax_detects


def test_a_lone_process_starts_nothing(calls):
  cluster.start(None, None, None)
  assert calls == []


def test_a_detected_cluster_lets_jax_read_it_and_says_so(calls, monkeypatch, caplog):
  for key, value in SLURM.items():
    monkeypatch.setenv(key, value)
  with caplog.at_level(logging.INFO):
    cluster.start(None, None, None)
  assert calls == [((), {})]  # JAX reads the coordinator, count and index itself
  assert any(r.getMessage().startswith("jax.distributed from SLURM: process 0 of 1 joined")
             for r in caplog.records)


def test_flags_start_the_given_processes(calls, monkeypatch):
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1.0;tcp://10.0.0.1:1")  # the flags win
  cluster.start("10.0.0.1:1234", 2, 1)
  assert calls == [(("10.0.0.1:1234", 2, 1), {})]
  with pytest.raises(ValueError, match=r"^--coordinator_address needs --num_processes and "
                     r"--process_id\.$"):
    cluster.start("10.0.0.1:1234", 2, None)


def test_a_failed_start_is_one_line(calls, monkeypatch):
  def unreachable(*args, **kwargs):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out.\n  more detail")

  monkeypatch.setattr(jax.distributed, "initialize", unreachable)
  with pytest.raises(ValueError) as error:
    cluster.start("10.0.0.1:1234", 2, 1)
  assert str(error.value) == (
      "jax.distributed could not start from --coordinator_address=10.0.0.1:1234 "
      "(DEADLINE_EXCEEDED: Barrier timed out.); check that every process runs the same command "
      "and can reach the coordinator")
