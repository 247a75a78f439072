"""Entry point: flags -> config -> distributed init -> train or evaluate.

  python -m lm_research.main --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny \\
      [--mode=train|eval] [--config.train.steps=200 ...]
Multi-process without a cluster manager:
  ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/NAME.py[:ARG]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _init_distributed() -> None:
  """jax.distributed from the flags, or JAX's own detection on TPU VMs and SLURM."""
  import jax  # after flags: XLA flags from the environment must be set before this import
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    # Cross-process collectives on CPU go through gloo (no effect on GPU/TPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()


def _write_config(config, workdir: str) -> None:
  """The resolved config as DIR/config.json (process 0)."""
  import jax
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)


class _OnlyOurInfo(std_logging.Filter):
  """Keeps libraries' (Orbax, JAX) INFO chatter out of the console; their warnings stay."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "lm_research" in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required: the directory for checkpoints and metrics.")
  for handler in std_logging.getLogger().handlers + logging.get_absl_logger().handlers:
    handler.addFilter(_OnlyOurInfo())
  _init_distributed()
  from lm_research import train  # imports JAX-heavy modules only once flags are valid
  config = _CONFIG.value
  _write_config(config, _WORKDIR.value)
  if _MODE.value == "train":
    train.train_and_evaluate(config, _WORKDIR.value)
  else:
    train.evaluate_only(config, _WORKDIR.value)


def run() -> None:
  """Console entry: turns config errors into one readable line instead of a traceback."""
  flags.mark_flag_as_required("config")
  try:
    app.run(main)
  except flags.IllegalFlagValueError as e:
    sys.exit(f"error: {str(e).splitlines()[-1]}")
  except ValueError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
