"""Entry point: flags -> config -> distributed init -> train or evaluate.

  python -m lm_research.main --config=configs/gpt_tiny.py [--workdir=runs/gpt_tiny] \\
      [--mode=train|eval|predict] [--config.train.steps=200 ...]
--workdir defaults to runs/<config name> (runs/gpt_tiny_llama for configs/gpt_tiny.py:llama).
Multi-process without a cluster manager:
  ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lm_research import hugepages, paths

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/NAME.py[:ARG]).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and logs (default runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to run.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _init_distributed() -> None:
  """jax.distributed from the flags, or from JAX's cluster detection (lm_research/cluster.py)."""
  from lm_research import cluster  # noqa: PLC0415  (imports JAX: after the flags set XLA's)
  cluster.start(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def default_workdir(config_arg: str) -> str:
  """runs/<config file name>[_<ARG>] for --config=configs/NAME.py[:ARG]."""
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", arg)
  return os.path.join("runs", name)


class _OnlyOurInfo(std_logging.Filter):
  """Keeps libraries' (Orbax, JAX) INFO chatter out of the console; their warnings stay, but
  not Orbax's errors about a failed save or read: the exception that follows them ends the run
  in one line (lm_research/checkpointing.py)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "lm_research" in record.pathname:
      return True
    if record.levelno >= std_logging.ERROR and "orbax" in record.pathname:
      return False
    return record.levelno >= std_logging.WARNING


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  paths.check_filesystem(workdir)  # a gs:// workdir without gcsfs: one line before any work
  for handler in std_logging.getLogger().handlers + logging.get_absl_logger().handlers:
    handler.addFilter(_OnlyOurInfo())
  _init_distributed()
  from lm_research import train  # noqa: PLC0415  (JAX-heavy: only once flags are valid)
  config = _CONFIG.value
  logging.info("--mode=%s in --workdir=%s", _MODE.value, workdir)
  if _MODE.value == "train":
    train.train_and_evaluate(config, workdir)  # writes config.json once the state fits
  elif _MODE.value == "eval":
    train.evaluate_only(config, workdir)
  else:
    train.predict_only(config, workdir)


def _flag_error_line(error: BaseException, argv: list[str]) -> str:
  """One readable line for a flag, config-file or config-key error (never a traceback)."""
  if isinstance(error, OSError):  # ml_collections could not load the --config file
    return f"cannot load the config file: {str(error).strip().splitlines()[-1].strip()}"
  if isinstance(error, (AttributeError, KeyError)):  # an override names no config field
    while error.args and isinstance(error.args[0], BaseException):
      error = error.args[0]
    text = str(error.args[0] if error.args else error)
    key = text.splitlines()[0].strip("'\"") if text else ""
    paths = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    path = next((p for p in paths if key in p.split(".")), f"config.{key}")
    hint = re.search(r'Did you mean "([^"]+)" instead of', text)
    if hint and key in path.split("."):
      parts = path.split(".")
      parts[parts.index(key)] = hint.group(1)
      return f"--{path} is not a config key; did you mean --{'.'.join(parts)}?"
    return f"--{path} is not a config key (see configs/base.py for every field)."
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _os_error_line(error: OSError) -> str:
  """One line for a filesystem error, with what to do about it."""
  where = f" writing {error.filename}" if error.filename else ""
  hint = {errno.ENOSPC: "free some space (or use a --workdir on a bigger disk), then rerun the "
                        "same command to resume from the newest checkpoint",
          errno.EDQUOT: "free some space, then rerun the same command to resume",
          errno.EROFS: "pick a writable --workdir",
          errno.EACCES: "pick a writable --workdir"}.get(error.errno, "check the path and rerun")
  return f"{error.strerror or error}{where}; {hint}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag, config file or config key exits with one line."""
  try:
    args = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.get("seed")  # a config file that failed to load raises only when read
    return args
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    sys.exit(f"error: {_flag_error_line(e, argv)}")


def run() -> None:
  """Console entry: turns config errors into one readable line instead of a traceback."""
  hugepages.reexec_with_hugepages()  # before any work: it restarts the process
  flags.mark_flag_as_required("config")
  try:
    app.run(main, flags_parser=_parse_flags)
  except flags.IllegalFlagValueError as e:
    sys.exit(f"error: {str(e).splitlines()[-1]}")
  except ValueError as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # a disk that filled up or turned read-only mid-run
    sys.exit(f"error: {_os_error_line(e)}")


if __name__ == "__main__":
  run()
