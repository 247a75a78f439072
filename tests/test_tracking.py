"""Tracking: the one real training run of these tests (gpt_tiny, synthetic data, 3 steps on one
device) leaves an offline W&B run holding its metrics, TensorBoard events, a profiler trace of
step 2, and no trace of the API key; plus W&B mode selection, resume by stored run id, and
the writer's fan-out. test_plot.py draws from the same run (``trained_run``)."""

import functools
import glob
import json
import os
import shutil
import struct
import tempfile
from unittest import mock

import jax
import pytest

from configs import gpt_tiny
from lm_research import tracking, train, writers

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

FAKE_KEY = "fakekey" + "0123456789abcdef" * 2 + "x"  # 40 characters, like a real one
TINY = dict(vocab_size=320, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_len=32)


def tiny_config(**changes):
  """gpt_tiny shrunk to seconds on synthetic data; vocab 320 fits a tokenizer trained on a line."""
  c = gpt_tiny.get_config()
  c.model.update(TINY)
  c.data.source = "synthetic"
  c.train.update(batch_size=4, seq_len=16, steps=3, warmup_steps=1)
  c.eval.update(every_steps=3, steps=1)
  c.checkpoint.every_steps = 0
  c.wandb.update(mode="offline", project="lm_research_tests", group="tests", tags="a, b",
                 notes="the tracking test", system_metrics=False)
  c.tensorboard.enabled = True
  c.profile.update(start_step=2, num_steps=1)
  for key, value in changes.items():
    node, *path = key.split(".")
    getattr(c, node)[path[0]] = value
  return c


@functools.lru_cache(maxsize=None)
def trained_run() -> tuple[str, dict]:
  """(workdir, last metrics) of the one training run, shared by this file and test_plot.py."""
  workdir = tempfile.mkdtemp(prefix="lm_research_tracking_")
  with mock.patch.dict(os.environ, {"WANDB_API_KEY": FAKE_KEY}):
    os.environ.pop("WANDB_MODE", None)
    last = train.train_and_evaluate(tiny_config(), workdir, devices=jax.devices()[:1])
  import atexit  # noqa: PLC0415
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  return workdir, last


@pytest.fixture(scope="module")
def run():
  return trained_run()


def test_offline_wandb_run_holds_the_metrics(run):
  workdir, last = run
  run_dirs = glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))
  assert len(run_dirs) == 1
  with open(os.path.join(workdir, "wandb", "run_id")) as f:
    run_id = f.read().strip()
  assert run_dirs[0].endswith("-" + run_id)
  history = tracking.offline_history(run_dirs[0])
  assert [h["_step"] for h in history] == [0, 1, 2, 3]  # the untrained eval, then each step
  assert history[3]["train/loss"] == pytest.approx(last["train/loss"])
  assert history[3]["eval/loss"] == pytest.approx(last["eval/loss"])
  # W&B holds exactly what metrics.jsonl (always written) holds, step by step
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [m["step"] for m in logged] == [0, 1, 2, 3]
  for h, m in zip(history, logged):
    assert {k: h[k] for k in m if k != "step"} == pytest.approx(
        {k: v for k, v in m.items() if k != "step"})


def test_wandb_run_has_the_configs_name_group_tags_and_config(run):
  workdir, _ = run
  (run_dir,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))
  (seen,) = [r.run for r in tracking.offline_records(run_dir)
             if r.WhichOneof("record_type") == "run"]
  assert seen.project == "lm_research_tests" and seen.run_group == "tests"
  assert list(seen.tags) == ["a", "b"] and seen.notes == "the tracking test"
  assert seen.display_name == os.path.basename(workdir)
  config = {item.key: json.loads(item.value_json) for item in seen.config.update}
  assert config["model"]["num_layers"] == 2 and config["train"]["steps"] == 3


def test_api_key_is_never_written_into_the_workdir(run):
  workdir, _ = run
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert FAKE_KEY.encode() not in f.read(), os.path.join(root, name)


def test_tensorboard_events_hold_the_scalars(run):
  from tensorboardX.proto import event_pb2
  workdir, _ = run
  (path,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  with open(path, "rb") as f:
    data = f.read()
  scalars, pos = {}, 0
  while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
    length = struct.unpack("<Q", data[pos:pos + 8])[0]
    event = event_pb2.Event()
    event.ParseFromString(data[pos + 12:pos + 12 + length])
    pos += 16 + length
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars[(value.tag, event.step)] = value.simple_value
  assert ("train/loss", 3) in scalars and ("eval/loss", 0) in scalars
  assert {step for tag, step in scalars if tag == "train/loss"} == {1, 2, 3}


def test_profile_traces_the_chosen_step(run):
  workdir, _ = run
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_wandb_mode_follows_config_then_env_then_key():
  assert tracking.wandb_mode("", {}) == "offline"
  assert tracking.wandb_mode("", {"WANDB_API_KEY": "k"}) == "online"
  assert tracking.wandb_mode("", {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
  assert tracking.wandb_mode("offline", {"WANDB_API_KEY": "k"}) == "offline"
  assert tracking.wandb_mode("", {"WANDB_MODE": "dryrun"}) == "offline"
  with pytest.raises(ValueError, match="wandb.mode='onlne' is not one of"):
    tracking.wandb_mode("onlne", {})


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
  config = tiny_config()
  first = tracking.WandbSink(config, str(tmp_path), "offline")
  first.write(1, {"train/loss": 2.0})
  first.close()
  second = tracking.WandbSink(config, str(tmp_path), "offline")
  second.write(2, {"train/loss": 1.0})
  second.close()
  assert first.run.id == second.run.id
  runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
  assert len(runs) == 2 and all(f"-{first.run.id}" in os.path.basename(r) for r in runs)
  assert [h["train/loss"] for r in runs for h in tracking.offline_history(r)] == [2.0, 1.0]


def test_failed_online_init_falls_back_to_offline_without_leaking_the_key(tmp_path, monkeypatch,
                                                                          caplog):
  import wandb
  real_init = wandb.init

  def init(mode, **kwargs):
    if mode == "online":  # what a bad key or no network looks like
      raise RuntimeError(f"401 Unauthorized for key {FAKE_KEY}")
    return real_init(mode=mode, **kwargs)

  monkeypatch.setattr(wandb, "init", init)
  monkeypatch.setattr(wandb, "teardown", lambda: None)  # no online run was started
  monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
  sink = tracking.WandbSink(tiny_config(), str(tmp_path), "online")
  sink.write(1, {"train/loss": 1.0})
  sink.close()
  assert sink.run.settings.mode == "offline"
  assert "logging offline instead" in caplog.text and "<WANDB_API_KEY>" in caplog.text
  assert FAKE_KEY not in caplog.text


def test_online_start_says_so_before_waiting_and_gives_up_at_the_timeout(tmp_path, monkeypatch,
                                                                          caplog):
  """The one network wait is announced first, and W&B is told wandb.init_timeout (its own
  default, 90 s, was a silent 91 s stall with a plausible key and no network)."""
  import wandb
  real_init = wandb.init
  seen = []

  def init(mode, settings, **kwargs):
    seen.append((mode, settings.init_timeout, [r.getMessage() for r in caplog.records]))
    if mode == "online":
      raise RuntimeError("Timed out while retrying: no such host")
    return real_init(mode=mode, settings=settings, **kwargs)

  monkeypatch.setattr(wandb, "init", init)
  monkeypatch.setattr(wandb, "teardown", lambda: None)  # no online run was started
  monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
  with caplog.at_level("INFO"):
    tracking.WandbSink(tiny_config(**{"wandb.init_timeout": 3.0}), str(tmp_path), "online").close()
  assert [(mode, timeout) for mode, timeout, _ in seen] == [("online", 3.0), ("offline", 3.0)]
  assert seen[0][2][-1] == "W&B: connecting online (up to wandb.init_timeout=3s, then logging " \
                           "offline)"


def test_disabled_and_non_main_processes_open_no_sinks(tmp_path):
  assert tracking.open_sinks(tiny_config(**{"tensorboard.enabled": False,
                                            "wandb.mode": "disabled"}), str(tmp_path)) == []
  assert tracking.open_sinks(tiny_config(), str(tmp_path), is_main=False) == []
  assert not os.path.exists(tmp_path / "wandb")
  with pytest.raises(ValueError, match="wandb.mode"):
    tracking.open_sinks(tiny_config(**{"wandb.mode": "cloud"}), str(tmp_path), is_main=False)


class _Sink:
  def __init__(self):
    self.calls = []

  def write(self, step, metrics):
    self.calls.append(("write", step, dict(metrics)))

  def truncate_after(self, step):
    self.calls.append(("truncate", step))

  def close(self, failed=False):
    self.calls.append(("close", failed))


def test_writer_fans_out_and_a_failure_is_reported(tmp_path):
  sink = _Sink()
  writer = writers.MetricsWriter(str(tmp_path), sinks=[sink])
  writer.truncate_after(0)
  writer.write(1, {"train/loss": float("nan")})
  assert sink.calls == [("truncate", 0), ("write", 1, {"train/loss": pytest.approx(float("nan"),
                                                                               nan_ok=True)})]
  assert writers.MetricsWriter(str(tmp_path), is_main=False, sinks=[sink]).sinks == []
  try:
    raise RuntimeError("training failed")
  except RuntimeError:
    tracking.close_sinks([sink])
  tracking.close_sinks([sink])
  assert sink.calls[-2:] == [("close", True), ("close", False)]


def test_bad_profile_range_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="profile.start_step=9 must be a step of this run"):
    train.train_and_evaluate(tiny_config(**{"profile.start_step": 9}), str(tmp_path),
                             devices=jax.devices()[:1])
  assert not os.path.exists(tmp_path / "checkpoints")
