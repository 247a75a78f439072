"""Cluster start-up: ``jax.distributed`` from explicit flags, or from JAX's own detection.

With --coordinator_address (and --num_processes, --process_id) the run starts those processes
without a cluster manager. Otherwise, when the environment is one that JAX's cluster detection
knows, plain ``jax.distributed.initialize()`` lets JAX read the coordinator, process count and
index itself: Cloud TPU VMs (their metadata; multi-slice included), GKE TPU jobs, SLURM, Open
MPI, and Kubernetes indexed Jobs / JobSets (with the ``kubernetes`` package, as JAX needs it).
``JAX_COORDINATOR_ADDRESS`` overrides the coordinator JAX would pick. A lone process starts
nothing. Either way one log line says what was detected and how many processes joined.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Mapping

from absl import logging

_GOOGLE_PCI_VENDOR = "0x1ae0"  # a TPU chip on the PCI bus: a Cloud TPU VM (as JAX checks)


def _tpu_host() -> bool:
  """libtpu installed and a TPU chip on the PCI bus: what JAX calls running on a Cloud TPU VM."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return any(open(path).read().strip() == _GOOGLE_PCI_VENDOR
             for path in glob.glob("/sys/bus/pci/devices/*/vendor"))


# (what the log line names, the environment JAX's detection of it reads), in JAX's order.
_CLUSTERS = (
    ("Open MPI", lambda env: "OMPI_MCA_orte_hnp_uri" in env),
    ("SLURM", lambda env: all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST",
                                                 "SLURM_NTASKS", "SLURM_PROCID",
                                                 "SLURM_LOCALID"))),
    ("GKE TPU", lambda env: ("TPU_WORKER_HOSTNAMES" in env or "TPU_PROCESS_ADDRESSES" in env)
     and _tpu_host()),
    # Its metadata server names the workers (TPU_SKIP_MDS_QUERY turns that query off).
    ("Cloud TPU VM", lambda env: "TPU_SKIP_MDS_QUERY" not in env and _tpu_host()),
    # Every pod has KUBERNETES_SERVICE_HOST; only an indexed Job's pods are one run's processes.
    ("Kubernetes Job", lambda env: "KUBERNETES_SERVICE_HOST" in env
     and "JOB_COMPLETION_INDEX" in env and importlib.util.find_spec("kubernetes") is not None),
)


def detect(env: Mapping[str, str] | None = None) -> str | None:
  """The name of the cluster environment JAX would detect here, or None for a lone process."""
  env = os.environ if env is None else env
  return next((name for name, present in _CLUSTERS if present(env)), None)


def start(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Starts jax.distributed from the flags or the detected cluster (before any JAX work);
  logs what joined."""
  import jax  # noqa: PLC0415  (after flags: XLA flags must be set before JAX is imported)
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id.")
    where, args = f"--coordinator_address={coordinator}", (coordinator, num_processes, process_id)
  else:
    where, args = detect(), ()
    if where is None:
      logging.info("One process (no cluster detected): %d devices.", jax.device_count())
      return
  # Cross-process collectives on CPU go through gloo (no effect on GPU/TPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(*args)
  except (RuntimeError, ValueError) as e:  # a coordinator that never answered, a partial env
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise ValueError(f"jax.distributed could not start from {where} ({first}); check that "
                     "every process runs the same command and can reach the coordinator") from None
  logging.info("jax.distributed from %s: process %d of %d joined, %d of %d devices local.",
               where, jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
