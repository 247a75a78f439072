"""Launch scripts: bash syntax, and what each dry run would run (in order, with the training
flags intact); missing settings end in one 'error:' line; the sweep's printed cluster
commands drive these scripts as they are."""

import logging as std_logging
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_vm.sh", "launch/gpu_slurm.sbatch", "launch/xpk_gke.sh"]
TRAIN_ARGS = ["--config=configs/gpt2_small.py", "--workdir=/shared/runs/g",
              "--config.wandb.notes=two words"]
# The training command as the scripts print it (the spaced value single-quoted).
TRAIN_LINE = ("python -m lm_research.main --config=configs/gpt2_small.py "
              "--workdir=/shared/runs/g '--config.wandb.notes=two words'")


def bash(script, *args, **env):
  """Runs a launch script with bash in the repository root, only the given extra environment."""
  base = {k: v for k, v in os.environ.items()
          if k not in ("TPU_NAME", "ZONE", "CLUSTER", "TPU_TYPE", "DEVICE_TYPE", "SLURM_JOB_ID",
                       "DRY_RUN")}
  return subprocess.run(["bash", script, *args], cwd=ROOT, env=dict(base, **env),
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax_and_executable(script):
  """Valid bash, executable, and stopping with a non-zero status at the first failed command
  (a failure inside a pipeline included)."""
  assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0
  assert os.access(os.path.join(ROOT, script), os.X_OK)
  with open(os.path.join(ROOT, script)) as f:
    assert "\nset -euo pipefail\n" in f.read()


def test_tpu_vm_dry_run_creates_sets_up_runs_on_all_workers_collects_and_deletes():
  result = bash("launch/tpu_vm.sh", "--create", "--delete", *TRAIN_ARGS, DRY_RUN="1",
                TPU_NAME="pod", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-16")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert all(line.startswith("+ ") for line in lines)
  steps = ["gcloud compute tpus tpu-vm create pod --zone=us-west4-a "
           "--accelerator-type=v5litepod-16",
           "git -C", "gcloud compute tpus tpu-vm scp", "pip install",
           "--worker=all '--command=set -o pipefail && cd ~/lm_research && mkdir -p ~/logs && "
           "python -m lm_research.main", "mkdir -p logs/pod",
           "gcloud compute tpus tpu-vm scp 'pod:~/logs/*' logs/pod/",
           "gcloud compute tpus tpu-vm delete pod --zone=us-west4-a"]
  found = [next(i for i, line in enumerate(lines) if step in line) for step in steps]
  assert found == sorted(found), lines  # in this order
  train = next(line for line in lines if "lm_research.main" in line)
  assert "tpu-vm ssh pod --zone=us-west4-a --worker=all" in train
  assert "--workdir=/shared/runs/g" in train and "two words" in train
  assert "tee ~/logs/train_$(hostname).log" in train
  plain = bash("launch/tpu_vm.sh", "--dry_run", *TRAIN_ARGS, TPU_NAME="pod", ZONE="z")
  assert " create " not in plain.stdout and " delete " not in plain.stdout


@pytest.mark.parametrize("exit_code", [0, 3])
def test_tpu_vm_exits_with_the_training_status(tmp_path, exit_code):
  """A real (not dry) run against stand-in gcloud and python: the workers' `python | tee log`
  reports python's status, not tee's, and the script exits with it after collecting logs."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "lm_research").mkdir(parents=True)
  stand_ins = {
      # Runs the training command's shell line here; create/scp/setup calls just succeed.
      "gcloud": 'for a in "$@"; do case "$a" in --command=*lm_research.main*) '
                'exec bash -c "${a#--command=}";; esac; done',
      "git": "exit 0",  # no archive to build
      "python": f'echo "python $*"; exit {exit_code}',
  }
  for name, body in stand_ins.items():
    (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
    (bin_dir / name).chmod(0o755)
  result = bash("launch/tpu_vm.sh", *TRAIN_ARGS, TPU_NAME="pod", ZONE="z", HOME=str(home),
                PATH=f"{bin_dir}:{os.environ['PATH']}", LOG_DIR=str(tmp_path / "logs"))
  assert result.returncode == exit_code, result.stderr
  assert result.stdout.splitlines()[-1] == (
      f"logs in {tmp_path / 'logs'}; training exit status {exit_code}")
  (log,) = (home / "logs").glob("train_*.log")  # tee still wrote the worker's log
  assert log.read_text().startswith("python -m lm_research.main --config=configs/gpt2_small.py")


@pytest.mark.parametrize("env, message", [
    ({"ZONE": "z"}, "error: set TPU_NAME"),
    ({"TPU_NAME": "pod"}, "error: set ZONE"),
])
def test_tpu_vm_missing_settings_fail_in_one_line(env, message):
  result = bash("launch/tpu_vm.sh", *TRAIN_ARGS, **env)
  assert result.returncode == 2 and result.stderr.strip().startswith(message)
  assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
  no_workdir = bash("launch/tpu_vm.sh", "--dry_run", TRAIN_ARGS[0], TPU_NAME="p", ZONE="z")
  assert no_workdir.returncode == 2 and "--workdir" in no_workdir.stderr


def test_slurm_dry_run_runs_one_process_per_node_through_srun():
  result = bash("launch/gpu_slurm.sbatch", *TRAIN_ARGS, DRY_RUN="1")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == (
      "+ srun --kill-on-bad-exit=1 --ntasks-per-node=1 " + TRAIN_LINE)
  with open(os.path.join(ROOT, "launch/gpu_slurm.sbatch")) as f:
    header = f.read()
  for directive in ("#SBATCH --nodes=", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=",
                    "#SBATCH --signal=TERM@", "#SBATCH --requeue"):
    assert directive in header
  # Outside a job it refuses, saying how to submit.
  outside = bash("launch/gpu_slurm.sbatch", *TRAIN_ARGS)
  assert outside.returncode == 2 and "sbatch launch/gpu_slurm.sbatch" in outside.stderr


def test_slurm_jobs_use_jax_slurm_detection(monkeypatch):
  """Inside a SLURM job, jax.distributed starts with no arguments (JAX reads the job's
  environment), which is what lets every srun task run the identical command."""
  import jax  # noqa: PLC0415
  from absl import flags  # noqa: PLC0415

  from lm_research import main  # noqa: PLC0415
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  parsed = flags.FLAGS.is_parsed()
  absl_level = std_logging.getLogger("absl").level  # unparse_flags raises it to WARNING
  if not parsed:
    flags.FLAGS(["main"])  # the defaults: no --coordinator_address
  try:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    main._init_distributed()
    assert calls == []  # a plain single-process run starts no cluster
    for key, value in {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():  # what srun sets
      monkeypatch.setenv(key, value)
    main._init_distributed()
    assert calls == [((), {})]
  finally:
    if not parsed:
      flags.FLAGS.unparse_flags()
      std_logging.getLogger("absl").setLevel(absl_level)


def test_xpk_dry_runs_for_tpu_and_gpu_and_workload_management():
  tpu = bash("launch/xpk_gke.sh", "--dry_run", *TRAIN_ARGS, CLUSTER="c", ZONE="z",
             TPU_TYPE="v5litepod-256", NUM_SLICES="2", WORKLOAD="w1")
  assert tpu.returncode == 0, tpu.stderr
  line = tpu.stdout.strip()
  assert line.startswith("+ xpk workload create --cluster=c --zone=z --workload=w1 "
                         "--tpu-type=v5litepod-256 --num-slices=2 ")
  assert "jax[tpu]==0.10.2" in line and "--script-dir=" + ROOT in line
  assert "--workdir=/shared/runs/g" in line and "two words" in line
  # Two slices: the mesh spans them over DCN (data parallelism), unless the flags say how.
  assert line.endswith("two words'\\'' --config.mesh.dcn_data=2'")  # the last training flag
  own = bash("launch/xpk_gke.sh", "--dry_run", *TRAIN_ARGS, "--config.mesh.dcn_fsdp=2",
             CLUSTER="c", ZONE="z", TPU_TYPE="v5litepod-256", NUM_SLICES="2", WORKLOAD="w1")
  assert "dcn_fsdp=2" in own.stdout and "dcn_data" not in own.stdout
  one = bash("launch/xpk_gke.sh", "--dry_run", *TRAIN_ARGS, CLUSTER="c", ZONE="z",
             TPU_TYPE="v5litepod-256", WORKLOAD="w1")
  assert "--num-slices=1 " in one.stdout and "dcn_" not in one.stdout
  gpu = bash("launch/xpk_gke.sh", "--dry_run", *TRAIN_ARGS, CLUSTER="c", ZONE="z",
             DEVICE_TYPE="h100-80gb-8", NUM_NODES="4")
  assert "--device-type=h100-80gb-8 --num-nodes=4" in gpu.stdout and "cuda12" in gpu.stdout
  listed = bash("launch/xpk_gke.sh", "--dry_run", "--list", CLUSTER="c", ZONE="z")
  assert listed.stdout.strip() == "+ xpk workload list --cluster=c --zone=z"
  deleted = bash("launch/xpk_gke.sh", "--dry_run", "--delete=w1", CLUSTER="c", ZONE="z")
  assert deleted.stdout.strip() == "+ xpk workload delete --workload=w1 --cluster=c --zone=z"
  neither = bash("launch/xpk_gke.sh", "--dry_run", *TRAIN_ARGS, CLUSTER="c", ZONE="z")
  assert neither.returncode == 2 and "TPU_TYPE" in neither.stderr


def test_sweep_cluster_commands_drive_the_scripts(tmp_path):
  sweep = [sys.executable, "-m", "launch.sweep", "--config=configs/gpt_tiny.py",
           "--sweep=configs/sweeps/gpt_tiny_grid.py", f"--workdir={tmp_path}"]
  tpu = subprocess.run(sweep + ["--print_commands=tpu"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert tpu.returncode == 0, tpu.stderr
  first = tpu.stdout.splitlines()[0]
  result = subprocess.run(["bash", "-c", first], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", TPU_NAME="pod", ZONE="z"))
  assert result.returncode == 0, result.stderr
  assert f"--workdir={tmp_path}/learning_rate=0.001,num_layers=1" in result.stdout
  assert "--config.wandb.group=gpt_tiny_grid" in result.stdout
