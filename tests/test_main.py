"""The command line as users run it: `python -m lm_research.main --config=... --workdir=...`.

One real (tiny) training run, and bad inputs that must end in one readable line, before any
work, without touching an existing workdir. Subprocesses inherit conftest's 8 fake devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.data.source=synthetic", "--config.model.vocab_size=64",
        "--config.model.d_model=32", "--config.model.num_layers=2", "--config.model.num_heads=4",
        "--config.model.d_ff=64", "--config.model.max_len=16", "--config.train.seq_len=16",
        "--config.train.batch_size=8", "--config.train.steps=2", "--config.train.warmup_steps=1",
        "--config.eval.every_steps=2", "--config.eval.steps=1", "--config.mesh.fsdp=2"]


def cli(workdir, *args) -> subprocess.CompletedProcess:
  """Runs the entry point in a fresh process (JAX flags from conftest's environment)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "lm_research.main", f"--workdir={workdir}", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A two-step gpt_tiny run with tiny overrides; its workdir."""
  workdir = tmp_path_factory.mktemp("gpt_tiny")
  result = cli(workdir, "--config=configs/gpt_tiny.py", *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_run_writes_resolved_config_and_metrics(trained):
  """config.json holds the overridden values; metrics.jsonl has one line per step with
  train/loss, and the last step's line carries its eval metrics too."""
  config = json.loads((trained / "config.json").read_text())
  assert config["train"]["steps"] == 2 and config["model"]["d_model"] == 32
  assert config["mesh"] == {"data": -1, "fsdp": 2, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1}
  assert config["data"]["source"] == "synthetic" and config["objective"] == "causal_lm"
  lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  if lines[0]["step"] == 0:  # the untrained model's evaluation, logged before step 1
    assert "eval/loss" in lines[0] and "train/loss" not in lines[0]
    lines = lines[1:]
  assert [m["step"] for m in lines] == [1, 2]
  for m in lines:
    assert 3.0 < m["train/loss"] < 6.0  # about ln(64) = 4.16 for an untrained model
  assert "eval/loss" in lines[1] and "eval/loss" not in lines[0]


def snapshot(workdir) -> dict:
  return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/gpt_tiny.py", "--config.train.stepz=3"],
     "--config.train.stepz is not a config key; did you mean --config.train.steps?"),
    (["--config=configs/gpt_tinny.py"], "configs/gpt_tinny.py"),
    (["--config=configs/gpt_tiny.py", "--config.train.steps=abc"], "--config.train.steps=abc"),
])
def test_bad_input_is_one_line_and_leaves_workdir_alone(trained, args, expected):
  """A misspelt key, an unknown config file or a wrong type: non-zero exit, one 'error:' line
  naming the problem, and the existing run's files unchanged."""
  before = snapshot(trained)
  result = cli(trained, *args)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert expected in lines[0]
  assert snapshot(trained) == before


def test_workdir_defaults_to_runs_and_the_config_name():
  from lm_research import main  # noqa: PLC0415
  assert main.default_workdir("configs/bert_base.py") == "runs/bert_base"
  assert main.default_workdir("configs/gpt_tiny.py:llama") == "runs/gpt_tiny_llama"
  assert main.default_workdir("configs/finetune_causal_lm.py:a b") == "runs/finetune_causal_lm_a_b"


def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path):
  """No traceback: the run stops with one 'error:' line saying what to do, file untouched."""
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  result = cli(path, "--config=configs/gpt_tiny.py", *TINY)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir={path} is a file, not a directory; pick another --workdir")
  assert "Traceback" not in result.stderr and path.read_text() == "mine"
