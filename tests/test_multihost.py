"""Two processes x 4 CPU devices (jax.distributed over 127.0.0.1, gloo) against 1 x 8.

The 2-process run trains on the bundled corpus, checkpoints, is SIGKILLed, resumes, and must
log the same losses as one 8-device process; each process reads only its own data shards.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lm_research import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "train.steps": 8, "checkpoint.every_steps": 2, "eval.every_steps": 4, "eval.steps": 2,
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


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process(tmp_path):
  """2 x 4 devices, SIGKILLed after step 5 and rerun, logs 1 x 8's losses within 1e-5."""
  single = str(tmp_path / "single")
  _finish([_launch(single, 8)])

  multi = str(tmp_path / "multi")
  procs = _two_processes(multi)
  deadline = time.time() + 400
  while not any(r["step"] >= 5 for r in writers.read_records(multi)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        "the 2-process run ended or stalled before step 5"
    time.sleep(0.1)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  outputs = _finish(_two_processes(multi))
  assert "Resuming from" in outputs[0]

  train_single, eval_single = _metrics(single)
  train_multi, eval_multi = _metrics(multi)
  assert sorted(train_multi) == list(range(1, 9))
  assert sorted(eval_multi) == sorted(eval_single) == [0, 4, 8]
  for step, loss in train_single.items():
    assert abs(train_multi[step] - loss) <= 1e-5 * abs(loss), step
  for step, loss in eval_single.items():
    assert abs(eval_multi[step] - loss) <= 1e-5 * abs(loss), step
