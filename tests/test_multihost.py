"""Two processes x 4 CPU devices (jax.distributed over 127.0.0.1, gloo) against 1 x 8.

The 2-process run trains on the bundled corpus and logs the same losses as one 8-device
process (each process reads only its own data shards). Interrupted, by SIGKILL to both or by
SIGTERM to one (both save the step JAX's preemption service picks and exit 0), and rerun, it
logs exactly the uninterrupted 2-process run's losses.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from lm_research import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Steps enough for a SIGTERM: JAX's notifier polls for it once a second, and the run goes on
# to the step every process reaches after the notice.
STEPS = 40
OVERRIDES = {
    "train.steps": STEPS, "checkpoint.every_steps": 8, "eval.every_steps": STEPS // 2,
    "eval.steps": 2,
    "train.batch_size": 8, "train.seq_len": 32, "train.log_every_steps": 2,
    "model.vocab_size": 512, "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 4,
    "model.d_ff": 64, "model.dropout_rate": 0.1,
    "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
    "data.source": "files", "data.train_path": "data/shakespeare/train",
    "data.eval_path": "data/shakespeare/eval",
}



def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, process_id=None, num_processes=None, port=None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  args = [sys.executable, "-m", "lm_research.main", "--config=configs/gpt_tiny.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  if process_id is not None:
    args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={process_id}"]
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir):
  port = _free_port()
  return [_launch(workdir, 4, i, 2, port) for i in range(2)]


def _wait_for_step(workdir, step, procs, timeout=400):
  deadline = time.time() + timeout
  while not any(r["step"] >= step for r in writers.read_records(workdir)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        f"the 2-process run ended or stalled before step {step}"
    time.sleep(0.05)


def _finish(procs, timeout=400):
  outputs = []
  for proc in procs:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    outputs.append(out)
  return outputs


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return ({r["step"]: r["train/loss"] for r in records if "train/loss" in r},
          {r["step"]: r["eval/loss"] for r in records if "eval/loss" in r})


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """One process x 8 devices, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp("single"))
  _finish([_launch(workdir, 8)])
  return workdir


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
  """Two processes x 4 devices, uninterrupted: the reference of the interrupted runs."""
  workdir = str(tmp_path_factory.mktemp("multi"))
  _finish(_two_processes(workdir))
  return workdir


@pytest.mark.slow
def test_two_processes_match_one_process(single, multi):
  """2 x 4 devices log 1 x 8's losses within 1e-5 (the reductions run in another order)."""
  train_single, eval_single = _metrics(single)
  train_multi, eval_multi = _metrics(multi)
  assert sorted(train_multi) == list(range(1, STEPS + 1))
  assert sorted(eval_multi) == sorted(eval_single) == [0, STEPS // 2, STEPS]
  for step, loss in train_single.items():
    assert abs(train_multi[step] - loss) <= 1e-5 * abs(loss), step
  for step, loss in eval_single.items():
    assert abs(eval_multi[step] - loss) <= 1e-5 * abs(loss), step


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_uninterrupted(multi, tmp_path):
  """Both processes SIGKILLed after step 17 (the step-16 save started, so step 8's committed),
  then rerun: the same losses as the uninterrupted run, bit for bit."""
  workdir = str(tmp_path)
  procs = _two_processes(workdir)
  _wait_for_step(workdir, 17, procs)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  outputs = _finish(_two_processes(workdir))
  assert "Resuming from" in outputs[0]
  assert _metrics(workdir) == _metrics(multi)


def _stopped_at(outputs):
  """The step both processes saved when preempted (each says so once, the same step)."""
  stopped = [re.findall(r"Preempted: saved a checkpoint at step (\d+)", out) for out in outputs]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
  return int(stopped[0][0])


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(multi, tmp_path):
  """SIGTERM to process 1 mid-run, then to process 0 of the rerun as soon as jax.distributed
  is up (the notice lands while it restores and compiles): each time both processes save the
  same step and exit 0; the last rerun logs the uninterrupted run's losses bit for bit."""
  workdir = str(tmp_path)
  procs = _two_processes(workdir)
  _wait_for_step(workdir, 2, procs)
  procs[1].send_signal(signal.SIGTERM)
  first = _stopped_at(_finish(procs))
  assert first < STEPS
  data = os.path.join(workdir, "checkpoints", str(first), "data")
  assert sorted(n for n in os.listdir(data) if n.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  procs = _two_processes(workdir)
  start_up = ""
  while "jax.distributed from" not in start_up:
    line = procs[0].stdout.readline()
    assert line, start_up[-3000:]
    start_up += line
  procs[0].send_signal(signal.SIGTERM)
  outputs = _finish(procs)
  second = _stopped_at(outputs)
  assert first < second < STEPS
  assert f"Resuming from {workdir}/checkpoints/{first}." in start_up + outputs[0]

  outputs = _finish(_two_processes(workdir))
  assert f"Resuming from {workdir}/checkpoints/{second}." in outputs[0]
  assert _metrics(workdir) == _metrics(multi)
