"""Faults a user can cause around a run, each ending in one clear line with nothing lost: a second
run on a busy workdir, a stale lock, a corrupt latest step, every step corrupt, a changed model
shape, a full disk, an unusable workdir, and predict inputs with blank, non-UTF-8 and huge lines.

In-process runs of gpt_tiny shrunk to seconds (synthetic data); the one subprocess test is the
second-process case, which needs two processes to mean anything."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest
from absl import logging

from configs import finetune_classification, gpt_tiny
from lm_research import main, train, workdir_lock
from test_finetune import sentiment_rows, task_config, write_jsonl

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=16)


def tiny(steps=4, **model):
  """gpt_tiny on synthetic data: checkpoints at every second step, no evaluation."""
  c = gpt_tiny.get_config()
  c.model.update({**TINY, **model})
  c.data.source = "synthetic"
  c.train.update(batch_size=8, seq_len=16, steps=steps, warmup_steps=1, log_every_steps=100)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 2
  c.wandb.mode = "disabled"
  return c


def ours(caplog):
  """Our log lines (library records may hold arrays deleted since)."""
  return [r.getMessage() for r in caplog.records if "lm_research" in r.pathname]


def metrics(workdir):
  """metrics.jsonl without the timing fields (perf/), which differ between runs."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
            for line in f]


def files(workdir):
  """Every file under ``workdir`` with its modification time."""
  return {os.path.join(d, n): os.path.getmtime(os.path.join(d, n))
          for d, _, names in os.walk(workdir) for n in names}


def steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def corrupt(workdir, step):
  """Halves every array file of one step, as a disk fault or a cut copy would."""
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  for folder, _, files in os.walk(state):
    if os.path.basename(folder) == "d":
      for name in files:
        path = os.path.join(folder, name)
        os.truncate(path, os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run with checkpoints at steps 2 and 4: copied by each test that damages it."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(tiny(), workdir)
  return workdir


def copy(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  return workdir


def test_a_busy_workdir_refuses_a_second_run_before_writing(tmp_path):
  """While a run holds the lock, another start stops at once naming the holder, and the
  workdir gains nothing but the lock file."""
  workdir = str(tmp_path)
  with workdir_lock.WorkdirLock(workdir):
    with pytest.raises(ValueError, match=rf"--workdir={workdir} is in use by pid {os.getpid()} "
                       rf"on host {socket.gethostname()} .*wait for it to finish"):
      train.train_and_evaluate(tiny(), workdir)
  assert os.listdir(workdir) == ["lock"]
  assert open(os.path.join(workdir, "lock")).read() == ""  # released: nobody to take over from


def test_a_dead_holders_lock_is_taken_over_and_another_hosts_is_not(tmp_path, caplog):
  """A lock file a killed run left (its pid gone) is taken over with one warning; one naming
  another host cannot be checked from here, so it is refused with what to do."""
  gone = subprocess.Popen(["true"])
  gone.wait()
  path = tmp_path / "lock"
  path.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "time": 0,
                              "command": "python -m lm_research.main"}))
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(str(tmp_path)):
      assert json.loads(path.read_text())["pid"] == os.getpid()
  assert ours(caplog) == [
      f"Taking over {path}: its holder, pid {gone.pid} on host {socket.gethostname()} (since "
      "1970-01-01 00:00:00 UTC: python -m lm_research.main), is gone."]
  path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "command": "x"}))
  with pytest.raises(ValueError, match=rf"locked by pid 1 on host elsewhere .*if no run is "
                     rf"alive there, delete {path} and rerun"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.slow
def test_a_second_process_on_a_busy_workdir_is_refused(tmp_path):
  """Two command lines on one workdir: the second exits with one 'error:' line naming the
  first, which finishes with every step logged once and all its checkpoints."""
  args = [sys.executable, "-m", "lm_research.main", "--config=configs/gpt_tiny.py",
          f"--workdir={tmp_path}", "--config.data.source=synthetic", "--config.train.steps=30",
          "--config.train.batch_size=8", "--config.train.seq_len=16",
          "--config.eval.every_steps=0", "--config.checkpoint.every_steps=10",
          *[f"--config.model.{k}={v}" for k, v in TINY.items()]]
  first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  lock = tmp_path / "lock"
  while not (lock.exists() and lock.read_text()) and first.poll() is None:
    time.sleep(0.05)
  second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  _, first_err = first.communicate(timeout=300)
  assert first.returncode == 0, first_err[-3000:]
  assert second.returncode == 1
  lines = second.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: --workdir={tmp_path} is in use by pid {first.pid} "), \
      second.stderr[-3000:]
  assert not any(line.startswith(("Traceback", "error:")) for line in lines[:-1])
  assert [m["step"] for m in metrics(str(tmp_path))] == list(range(1, 31))
  assert steps_on_disk(str(tmp_path)) == [10, 20, 30]


def test_a_corrupt_latest_step_is_quarantined_and_the_run_goes_on(trained, tmp_path, caplog):
  """Step 4 unreadable: it is moved to checkpoints/quarantine/ in one warning, training resumes
  from step 2 and saves step 4 again, with the same metrics."""
  workdir = copy(trained, tmp_path)
  corrupt(workdir, 4)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(tiny(), workdir)
  moved = [m for m in ours(caplog) if "quarantine" in m]
  assert len(moved) == 1 and moved[0].startswith(
      f"Checkpoint {workdir}/checkpoints/4 is unreadable (")
  assert moved[0].endswith(f"moved it to {workdir}/checkpoints/quarantine/4-unreadable-"
                           "metadata and resuming from the newest readable step.")
  assert os.listdir(os.path.join(workdir, "checkpoints", "quarantine")) == [
      "4-unreadable-metadata"]
  # Step 4 saved again (it used to die on 'Checkpoint for step 4 already exists', every rerun).
  assert steps_on_disk(workdir) == [2, 4]
  assert metrics(workdir) == metrics(trained)  # steps 3-4 retrained from step 2: bit-identical


def test_eval_on_a_busy_workdir_reads_and_writes_nothing(trained, tmp_path, caplog):
  """--mode=eval while a training run holds the workdir: it evaluates the latest committed
  step, leaves checkpoints/ and metrics.jsonl alone, and says why it did not log there."""
  workdir = copy(trained, tmp_path)
  config = tiny()
  config.eval.steps = 1
  with workdir_lock.WorkdirLock(workdir), caplog.at_level(logging.WARNING):
    before = files(workdir)
    assert "eval/loss" in train.evaluate_only(config, workdir)
    assert files(workdir) == before
  assert any(m.endswith("this evaluation is printed but not added to metrics.jsonl.")
             for m in ours(caplog))


def test_every_step_corrupt_stops_and_keeps_the_metrics(trained, tmp_path):
  """No readable step left: one error saying what to do, on this run and the next, and the
  metrics of the lost steps are not overwritten by a fresh start."""
  workdir = copy(trained, tmp_path)
  corrupt(workdir, 2)
  corrupt(workdir, 4)
  before = metrics(workdir)
  for _ in range(2):
    with pytest.raises(ValueError, match=rf"no readable checkpoint in {workdir}/checkpoints "
                       r"\(unreadable steps .*, moved to .*quarantine\); use a new --workdir, "
                       r"or move checkpoints/ and metrics.jsonl aside"):
      train.train_and_evaluate(tiny(steps=6), workdir)
    assert metrics(workdir) == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "quarantine"))) == [
      "2-unreadable-metadata", "4-unreadable-metadata"]


def test_a_changed_shape_is_a_config_error_not_corruption(trained, tmp_path, caplog):
  """d_model 32 -> 64: one error naming the field, no step called unreadable or moved, and
  config.json still the training run's."""
  workdir = copy(trained, tmp_path)
  config_json = open(os.path.join(workdir, "config.json")).read()
  with caplog.at_level(logging.WARNING):
    with pytest.raises(ValueError, match=rf"checkpoint {workdir}/checkpoints/4 was saved by "
                       r"another model or optimizer \(model.d_model=32 \(this run: 64\)\): rerun "
                       r"with the training run's config and flags, or use a new --workdir"):
      train.train_and_evaluate(tiny(steps=6, d_model=64), workdir)
  assert not [m for m in ours(caplog) if "unreadable" in m]
  assert steps_on_disk(workdir) == [2, 4]
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "quarantine"))
  assert open(os.path.join(workdir, "config.json")).read() == config_json


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(trained, tmp_path, monkeypatch):
  """Orbax failing to write (as TensorStore reports ENOSPC) ends the run in one line; step 4,
  the last committed checkpoint, is kept and the next run resumes from it."""
  workdir = copy(trained, tmp_path)

  def full(*args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.x" in OCDBT database: '
                     '[OS error 28: No space left on device]')

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(ValueError, match=rf"^no space left on the disk of {workdir}/checkpoints: "
                     r"free some space .*then rerun the same command; it resumes from the "
                     r"newest committed checkpoint$"):
    train.train_and_evaluate(tiny(steps=6), workdir)
  assert steps_on_disk(workdir) == [2, 4]
  assert main._os_error_line(OSError(errno.ENOSPC, "No space left on device", "m.jsonl")) == (
      "No space left on device writing m.jsonl; free some space (or use a --workdir on a bigger "
      "disk), then rerun the same command to resume from the newest checkpoint")


@pytest.mark.parametrize("under, message", [
    ("", "is a file, not a directory"), ("run", "lies under a file, not a directory")])
def test_an_unusable_workdir_is_one_line(tmp_path, under, message):
  (tmp_path / "w").write_text("x")
  workdir = str(tmp_path / "w" / under) if under else str(tmp_path / "w")
  with pytest.raises(ValueError, match=f"^--workdir={workdir} {message}; pick another"):
    train.train_and_evaluate(tiny(), workdir)


def test_a_read_only_workdir_is_one_line(tmp_path, monkeypatch):
  """(Faked: root, which runs these tests in CI containers, may write anywhere.)"""
  monkeypatch.setattr(workdir_lock.os, "access", lambda path, mode: False)
  with pytest.raises(ValueError, match=f"^--workdir={tmp_path} is not writable"):
    train.train_and_evaluate(tiny(), str(tmp_path))


def test_predict_gives_one_line_per_input_line_on_a_busy_workdir(tmp_path, caplog):
  """8 input lines (2 blank, 1 not UTF-8, 1 of 100,000 characters) -> 8 outputs numbered 1-8,
  errors where there is nothing to predict, the long one marked truncated; predicting while
  a training run holds the workdir reads its checkpoint and writes nothing into checkpoints/."""
  train_path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(64, 0))
  c = task_config(finetune_classification, train_path, train_path, steps=2)
  c.eval.every_steps = 0
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  inputs = tmp_path / "in.txt"
  inputs.write_bytes(b"the great river\n\nawful paper\n\xff\xfe odd bytes\n   \n"
                     + b"lovely city " * 8334 + b"\nokay house\nthe end")
  c.predict.input, c.predict.output = str(inputs), str(tmp_path / "out.jsonl")
  listing = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with workdir_lock.WorkdirLock(workdir), caplog.at_level(logging.INFO):
    train.predict_only(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == listing
  out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [o["line"] for o in out] == list(range(1, 9))
  assert {o["line"]: o["error"] for o in out if "error" in o} == {
      2: "blank line", 4: "not UTF-8 (byte 0xff at column 1); save the file as UTF-8",
      5: "blank line"}
  assert [o["text"] for o in out if "text" in o] == [
      "the great river", "awful paper", "lovely city " * 8334, "okay house",
      "the end"]
  assert [o["truncated"] for o in out if "error" not in o] == [False, False, True, False, False]
  assert all(o["label"] in ("negative", "neutral", "positive") for o in out if "text" in o)
  assert ours(caplog)[-1] == (
      f"wrote 8 predictions (one per input line) to {tmp_path}/out.jsonl; 3 lines could not be "
      "predicted (lines 2, 4, 5: see their 'error'); 1 of 5 inputs were longer than "
      "train.seq_len=16 tokens and were cut ('truncated': true); "
      "--config.data.truncation=windows reads all of a long text")
