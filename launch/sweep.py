"""Ablation sweeps: expand a grid or seeded random search into runs, run them, summarise them.

  python -m launch.sweep --config=configs/gpt_tiny.py --sweep=configs/sweeps/gpt_tiny_grid.py \\
      [--workdir=runs/sweeps/NAME] [--parallel=N] [--dry_run] [--print_commands=local|slurm|tpu] \\
      [--export_wandb=FILE.yaml] [--summary_only] [--config.KEY=VALUE ...]

Each run is ``python -m lm_research.main`` in WORKDIR/<run name> (named from its parameters),
all runs in one W&B group (the sweep's name). Rerunning the command skips the runs whose
metrics.jsonl reached train.steps and resumes the others from their checkpoints. Then it writes
WORKDIR/summary.csv, summary.md and comparison.png. Ctrl-C sends SIGTERM to the running runs,
which save a checkpoint and stop; rerun to continue. ``--print_commands=slurm|tpu`` prints one
launch command per unfinished run (pipe it to bash), and a later ``--summary_only`` collects them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

from launch import sweep_spec
from launch.sweep_summary import write_summary

MAIN = [sys.executable, "-m", "lm_research.main"]


@dataclasses.dataclass
class Run:
  """One run of a sweep: its swept values, workdir, step target and command line."""

  name: str
  params: dict[str, Any]
  workdir: str
  steps: int
  args: list[str]  # flags for lm_research.main (also for launch/*.sh)
  returncode: int | None = None

  @property
  def command(self) -> list[str]:
    """The local command that trains this run."""
    return MAIN + self.args


def load_config(config: str, overrides: Sequence[str] = ()):
  """The locked ConfigDict of ``configs/NAME.py[:ARG]`` with ``--config.KEY=VALUE`` overrides."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  argv = ["sweep", f"--config={config}", *overrides]
  fv = flags.FlagValues()  # our own, so lm_research.main's --config never clashes
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                  lock_config=True, sys_argv=argv)  # overrides from argv, not sys
  try:
    fv(argv)
    return fv.config
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    raise ValueError(f"--config={config} {' '.join(overrides)}: "
                     f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}") from None


def _with_overrides(config, values: dict[str, Any], where: str):
  """A copy of ``config`` with dotted-key values set; a wrong key or type is a one-line error."""
  config = copy.deepcopy(config)
  for key, value in values.items():
    node, parts = config, key.split(".")
    try:
      for part in parts[:-1]:
        node = node[part]
      if parts[-1] not in node:
        raise KeyError(parts[-1])
      node[parts[-1]] = value
    except (KeyError, AttributeError, TypeError) as e:
      kind = "is not a config key" if not isinstance(e, TypeError) else f"cannot be {value!r}"
      raise ValueError(f"{where}: {key} {kind} (see configs/base.py).") from None
  return config


def _name_and_workdir(spec: dict, sweep_file: str, workdir: str) -> tuple[str, str]:
  """The sweep's name (its file's, unless the spec names it) and its workdir."""
  name = spec.get("name") or os.path.splitext(os.path.basename(sweep_file))[0]
  return name, workdir or os.path.join("runs", "sweeps", name)


def _run_args(config: str, run_dir: str, overrides: Sequence[str], values: dict[str, Any],
              group: str) -> list[str]:
  """lm_research.main flags of one run: config, workdir, overrides, values, W&B group/name."""
  args = [f"--config={config}", f"--workdir={run_dir}", *overrides]
  args += [f"--config.{k}={sweep_spec.format_value(v)}" for k, v in values.items()]
  return args + [f"--config.wandb.group={group}",
                 f"--config.wandb.name={group}/{os.path.basename(run_dir)}"]


def plan(config: str, sweep_file: str, workdir: str = "", overrides: Sequence[str] = ()):
  """(spec, sweep name, workdir, runs) for a sweep file over a config, validated up front."""
  spec = sweep_spec.load_sweep(sweep_file)
  name, workdir = _name_and_workdir(spec, sweep_file, workdir)
  base = load_config(config, overrides)
  fixed = spec.get("fixed", {})
  all_params = sweep_spec.expand(spec)
  runs = []
  for run_name, params in zip(sweep_spec.unique_names(all_params), all_params):
    resolved = _with_overrides(base, {**fixed, **params}, sweep_file)
    run_dir = os.path.join(workdir, run_name)
    args = _run_args(config, run_dir, overrides, {**fixed, **params}, name)
    runs.append(Run(run_name, params, run_dir, resolved.train.steps, args))
  return spec, name, workdir, runs


def last_step(workdir: str) -> int:
  """The highest step in WORKDIR/metrics.jsonl (-1 when there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  step = -1
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          step = max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
          continue  # a line cut short by a kill: the rerun rewrites it
  return step


def is_finished(run: Run) -> bool:
  """Whether the run's metrics reached its train.steps."""
  return last_step(run.workdir) >= run.steps


def format_command(run: Run, kind: str) -> str:
  """One shell line that trains ``run``: locally, as a SLURM job, or on a TPU VM slice."""
  args = " ".join(shlex.quote(a) for a in run.args)
  if kind == "local":
    return "python -m lm_research.main " + args
  if kind == "slurm":  # Slurm does not create the --output folder itself
    return (f"mkdir -p {shlex.quote(run.workdir)} && sbatch --job-name={shlex.quote(run.name)} "
            f"--output={shlex.quote(os.path.join(run.workdir, 'slurm-%j.out'))} "
            f"launch/gpu_slurm.sbatch {args}")
  if kind == "tpu":  # TPU_NAME and ZONE come from the environment (see launch/tpu_vm.sh)
    return "launch/tpu_vm.sh " + args
  raise ValueError(f"--print_commands={kind!r} is not one of local, slurm, tpu.")


def run_all(runs: Sequence[Run], parallel: int = 1, poll_s: float = 0.2) -> None:
  """Runs each command (at most ``parallel`` at once), logging to WORKDIR/<run>/train.log;
  sets each run's returncode. Ctrl-C stops the running ones with SIGTERM (they checkpoint)."""
  if parallel < 1:
    raise ValueError(f"--parallel={parallel} must be at least 1.")
  queue, running = list(runs), []
  total, started = len(runs), 0
  try:
    while queue or running:
      while queue and len(running) < parallel:
        run = queue.pop(0)
        started += 1
        os.makedirs(run.workdir, exist_ok=True)
        log = open(os.path.join(run.workdir, "train.log"), "a")  # noqa: SIM115  (closed below)
        proc = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT)
        running.append((run, proc, log, time.time()))
        print(f"[{started}/{total}] started {run.name} (log: {log.name})", flush=True)
      for item in list(running):
        run, proc, log, start = item
        if proc.poll() is None:
          continue
        running.remove(item)
        log.close()
        run.returncode = proc.returncode
        status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"  {run.name}: {status} in {time.time() - start:.0f} s", flush=True)
      time.sleep(poll_s if running else 0)
  except KeyboardInterrupt:
    for run, proc, log, _ in running:
      proc.terminate()  # SIGTERM: the trainer saves a checkpoint at the next step and exits
      proc.wait()
      log.close()
      run.returncode = proc.returncode
    print("Interrupted: running runs saved a checkpoint; rerun the same command to continue.")
    raise


def _agent(args, overrides: list[str]) -> int:
  """``wandb agent`` entry: the values arrive as --config.KEY=VALUE; trains that run in the
  workdir a local sweep would give it."""
  spec = sweep_spec.load_sweep(args.sweep)
  name, workdir = _name_and_workdir(spec, args.sweep, args.workdir)
  config = load_config(args.config, overrides)  # checks them, and types them as the config does
  given = {o[len("--config."):].split("=", 1)[0] for o in overrides}
  params = {}
  for key in spec["parameters"]:
    if key in given:
      node = config
      for part in key.split("."):
        node = node[part]
      params[key] = node
  run_dir = os.path.join(workdir, sweep_spec.run_name(params))
  return subprocess.call(MAIN + _run_args(args.config, run_dir, overrides, {}, name))


def _parse(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="python -m launch.sweep", allow_abbrev=False,
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
  parser.add_argument("--sweep", required=True, help="configs/sweeps/NAME.py")
  parser.add_argument("--workdir", default="", help="default runs/sweeps/<sweep name>")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once (local)")
  parser.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
  parser.add_argument("--print_commands", choices=["local", "slurm", "tpu"],
                      help="print a launch command per unfinished run, run nothing")
  parser.add_argument("--export_wandb", default="", help="write a W&B sweep YAML here")
  parser.add_argument("--summary_only", action="store_true", help="only write the summary")
  parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.") or "=" not in a]
  if bad:
    parser.error(f"unexpected arguments {' '.join(bad)} (extra overrides are --config.KEY=VALUE)")
  return args, rest


def main(argv: Sequence[str]) -> int:
  """The CLI; returns the exit status (1 when a run failed)."""
  args, overrides = _parse(argv)
  if args.agent:
    return _agent(args, overrides)
  spec, name, workdir, runs = plan(args.config, args.sweep, args.workdir, overrides)
  if args.export_wandb:
    _export_wandb(sweep_spec.wandb_sweep(spec, name, args.config, args.sweep, workdir),
                  args.export_wandb)
    return 0
  todo = [r for r in runs if not is_finished(r)]
  if args.print_commands:
    for run in todo:
      print(format_command(run, args.print_commands))
    return 0
  if args.dry_run:
    print(f"sweep {name}: {len(runs)} runs in {workdir}, {len(runs) - len(todo)} finished")
    for run in runs:
      step = max(last_step(run.workdir), 0)
      state = "finished" if run not in todo else f"to run (at step {step})"
      print(f"  {run.name}: {state}\n    {format_command(run, 'local')}")
    return 0
  if not args.summary_only:
    if len(todo) < len(runs):
      print(f"Skipping {len(runs) - len(todo)} finished runs of {len(runs)}.", flush=True)
    run_all(todo, args.parallel)
  for path in write_summary(runs, workdir, spec):
    print(path)
  failed = [r.name for r in todo if r.returncode not in (None, 0)]
  if failed:
    print(f"{len(failed)} runs failed: {', '.join(failed)}; see their train.log.", file=sys.stderr)
  return 1 if failed else 0


def _export_wandb(exported: dict, path: str) -> None:
  """Writes the W&B sweep YAML and says how to start it."""
  import yaml  # noqa: PLC0415  (PyYAML, pinned in requirements.txt)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    yaml.safe_dump(exported, f, sort_keys=False)
  print(f"W&B sweep written to {path}: run `wandb sweep {path}`, then `wandb agent "
        "ENTITY/PROJECT/SWEEP_ID` from this directory.")


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except ValueError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(130)
