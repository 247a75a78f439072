"""Checkpoints: exact resume (in-process, SIGTERM, SIGKILL), corrupt steps, other meshes,
init_from."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import logging
from flax import nnx

from configs import bert_tiny, gpt_tiny
from lm_research import checkpointing, experiment, pretrained, sharding, train, writers
from lm_research.checkpointing import Checkpointer
from lm_research.models.layout import get_params, unstack_layers
from lm_research.optim import make_optimizer

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"data.source": "synthetic", "model.vocab_size": 64, "model.d_model": 32,
        "model.num_layers": 2, "model.num_heads": 4, "model.d_ff": 64, "model.dropout_rate": 0.1,
        "train.batch_size": 8, "train.seq_len": 16, "eval.every_steps": 0,
        "train.log_every_steps": 5}



def _config(module=gpt_tiny, **overrides):
  config = module.get_config()
  for key, value in {**TINY, **overrides}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  steps = [r["step"] for r in records if "train/loss" in r]
  assert steps == sorted(set(steps)), "each step is logged once, in order"
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A 12-step run with checkpoints every 4 steps: the reference for every resume test."""
  workdir = str(tmp_path_factory.mktemp("full"))
  train.train_and_evaluate(_config(**{"train.steps": 12, "checkpoint.every_steps": 4}), workdir)
  return workdir


# The signalled runs go on well past the signal (sent once step 9 is logged): at ~13 ms a tiny
# step, a 12-step run could finish before the signal arrived.
SIGNALLED_STEPS = 32


@pytest.fixture(scope="module")
def uninterrupted_long(tmp_path_factory):
  """The signal tests' reference: SIGNALLED_STEPS steps, checkpoints every 4 steps."""
  workdir = str(tmp_path_factory.mktemp("full_long"))
  train.train_and_evaluate(
      _config(**{"train.steps": SIGNALLED_STEPS, "checkpoint.every_steps": 4}), workdir)
  return workdir


def _to_legacy_layout(workdir):
  """Moves each step's data positions (checkpoints/<step>/data/process_0-of-1.json) to where
  runs before the move kept them: checkpoints/data/process_0/<step>.json."""
  directory = os.path.join(workdir, "checkpoints")
  os.makedirs(os.path.join(directory, "data", "process_0"))
  for step in (n for n in os.listdir(directory) if n.isdigit()):
    item = os.path.join(directory, step, "data")
    os.rename(os.path.join(item, "process_0-of-1.json"),
              os.path.join(directory, "data", "process_0", f"{step}.json"))
    shutil.rmtree(item)


@pytest.mark.parametrize("legacy", [False, True])
def test_resume_in_process_is_bitwise_identical(uninterrupted, tmp_path, legacy):
  """Stopping at step 6 and rerunning the same config gives the same loss at every step, also
  from a workdir whose data positions are in the layout before they moved into the step."""
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(**{"train.steps": 6, "checkpoint.every_steps": 4}), workdir)
  if legacy:
    _to_legacy_layout(workdir)
  train.train_and_evaluate(_config(**{"train.steps": 12, "checkpoint.every_steps": 4}), workdir)
  assert _losses(workdir) == _losses(uninterrupted)
  saved = os.listdir(os.path.join(workdir, "checkpoints", "12", "data"))
  assert [n for n in saved if n.endswith(".json")] == ["process_0-of-1.json"]


def test_corrupt_latest_checkpoint_falls_back_to_previous(uninterrupted, tmp_path, caplog):
  """An unreadable newest step is moved to quarantine/ with a warning naming it; the one
  before is used."""
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "12", "state")
  for name in os.listdir(state_dir):
    path = os.path.join(state_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
  config = _config(**{"train.steps": 12, "checkpoint.every_steps": 4})
  exp = experiment.make_experiment(config)
  tx, _ = make_optimizer(exp.optim_cfg)
  ckpt = train.Checkpointer(workdir)
  with caplog.at_level(logging.WARNING):
    _, abstract, _, _ = experiment.state_layout(exp, tx)
    state, data_state, step = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 8
  assert data_state == {"step": 8}
  assert any("12" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
  # A writer moves the unreadable step aside (kept, not deleted) so training can save it again.
  assert os.listdir(os.path.join(workdir, "checkpoints", "quarantine")) == [
      "12-unreadable-metadata"]


def test_checkpoint_of_another_layout_is_refused_and_kept(uninterrupted, tmp_path):
  """A workdir restored with a config whose state differs (here train.ema_decay added) ends in
  one line naming the fix, before any step runs, and its checkpoints stay as they were."""
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  config = _config(**{"train.steps": 16, "checkpoint.every_steps": 4, "train.ema_decay": 0.9})
  with pytest.raises(ValueError, match=r"checkpoints/12 was saved by another model or optimizer "
                     r"\(train.ema_decay=0.0 \(this run: 0.9\)\): rerun with the training run's "
                     r"config and flags"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert max(_losses(workdir)) == 12


def test_restore_onto_another_mesh(tmp_path):
  """Saved on mesh (1,8,1) (FSDP), restored on (2,1,1) over 2 devices: same parameters."""
  workdir = str(tmp_path)
  saved_cfg = _config(**{"train.steps": 2, "checkpoint.every_steps": 2, "mesh.data": 1,
                         "mesh.fsdp": 8})
  train.train_and_evaluate(saved_cfg, workdir)
  exp8 = experiment.make_experiment(saved_cfg)
  exp2 = experiment.make_experiment(_config(**{"mesh.data": 2}), devices=jax.devices()[:2])
  params = {}
  for exp in (exp8, exp2):
    tx, _ = make_optimizer(exp.optim_cfg)
    ckpt = train.Checkpointer(workdir)
    _, abstract, _, _ = experiment.state_layout(exp, tx)
    state, _, step = ckpt.restore_latest(abstract)
    ckpt.close()
    assert step == 2
    leaves = jax.tree.leaves(state.params)
    assert all(len(x.sharding.device_set) == len(exp.mesh.devices.flat) for x in leaves)
    params[len(exp.mesh.devices.flat)] = [np.asarray(x) for x in leaves]
  for a, b in zip(params[8], params[2]):
    np.testing.assert_array_equal(a, b)


def test_init_from_loads_body_into_new_head(tmp_path, caplog):
  """A BERT pretraining checkpoint initialises a classifier: body copied, head fresh, listed."""
  workdir = str(tmp_path)
  body_cfg = _config(bert_tiny, **{"train.steps": 3, "checkpoint.every_steps": 3})
  train.train_and_evaluate(body_cfg, workdir)
  cls_cfg = _config(bert_tiny, **{"model.head": "sequence_classification",
                                  "model.num_labels": 3})
  exp = experiment.make_experiment(cls_cfg)
  tx, _ = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh), caplog.at_level(logging.WARNING):
    graphdef, fresh, _ = experiment.create_train_state(exp, tx)
    fresh_params = get_params(nnx.merge(graphdef, fresh.params))
    loaded = pretrained.load_into(workdir, graphdef, fresh.params, exp.model_cfg)
  loaded_params = get_params(nnx.merge(graphdef, loaded))
  source = unstack_layers(checkpointing.read_params(workdir))
  np.testing.assert_array_equal(loaded_params["embeddings"]["token"]["embedding"],
                                source["embeddings"]["token"]["embedding"])
  assert not np.array_equal(loaded_params["embeddings"]["token"]["embedding"],
                            fresh_params["embeddings"]["token"]["embedding"])
  np.testing.assert_array_equal(loaded_params["classifier"]["dense"]["kernel"],
                                fresh_params["classifier"]["dense"]["kernel"])
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "classifier.dense.kernel" in messages and "mlm.bias" in messages and "nsp" in messages


def _step0_eval_loss(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return next(r["eval/loss"] for r in map(json.loads, f) if r["step"] == 0)


def test_ema_run_hands_on_its_average_and_starts_from_init_from(tmp_path):
  """A run with train.ema_decay saves the average beside the weights, and init_from takes the
  average; a run started from init_from begins its average at the loaded weights, so its
  step-0 evaluation equals a run's without the average."""
  body = str(tmp_path / "body")
  train.train_and_evaluate(_config(**{"train.steps": 3, "checkpoint.every_steps": 3,
                                      "train.ema_decay": 0.5}), body)
  exp = experiment.make_experiment(_config(**{"train.ema_decay": 0.5}))
  tx, _ = make_optimizer(exp.optim_cfg)
  ckpt = Checkpointer(body)
  with sharding.active_mesh(exp.mesh):
    graphdef, state, _, _ = train.trained_state(exp, tx, ckpt)
  ckpt.close()
  average = get_params(nnx.merge(graphdef, state.opt_state[-1].params_ema))
  weights = get_params(nnx.merge(graphdef, state.params))
  loaded = unstack_layers(checkpointing.read_params(body))
  token = ("embeddings", "token", "embedding")
  pick = lambda tree: tree[token[0]][token[1]][token[2]]  # noqa: E731
  np.testing.assert_array_equal(pick(loaded), pick(average))
  assert not np.array_equal(pick(loaded), pick(weights))
  losses = []
  for decay in (0.0, 0.9):
    workdir = str(tmp_path / f"ema{decay}")
    train.train_and_evaluate(_config(**{"init_from": body, "train.steps": 1,
                                        "train.ema_decay": decay, "eval.every_steps": 1}),
                             workdir)
    losses.append(_step0_eval_loss(workdir))
  assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_init_from_shape_mismatch_is_one_line_error(tmp_path):
  """A body of another width is refused with the parameter's name and both shapes."""
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(**{"train.steps": 1, "checkpoint.every_steps": 1}), workdir)
  wide = _config(**{"model.d_model": 48})
  exp = experiment.make_experiment(wide)
  tx, _ = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh):
    graphdef, fresh, _ = experiment.create_train_state(exp, tx)
    with pytest.raises(ValueError, match=r"has shape .* in the checkpoint but"):
      pretrained.load_into(workdir, graphdef, fresh.params, exp.model_cfg)


def _cli(workdir, *extra, env=None):
  """Command line of the signalled run (same config as ``uninterrupted_long``)."""
  args = [sys.executable, "-m", "lm_research.main", "--config=configs/gpt_tiny.py",
          f"--workdir={workdir}", f"--config.train.steps={SIGNALLED_STEPS}",
          "--config.checkpoint.every_steps=4"]
  args += [f"--config.{k}={v}" for k, v in TINY.items()]
  return subprocess.Popen(args + list(extra), cwd=ROOT, env=env or os.environ.copy(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir, step, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError("run ended early:\n" + proc.stdout.read()[-2000:])
    if any(r["step"] >= step for r in writers.read_records(workdir)):
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} never logged")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_then_rerun_matches_uninterrupted(uninterrupted_long, tmp_path, sig):
  """SIGTERM (save at the step boundary, exit 0) or SIGKILL mid-run, then the same command."""
  workdir = str(tmp_path)
  proc = _cli(workdir)
  # By step 9 the step-8 save has started, so the step-4 one has committed (Orbax runs one
  # save at a time); the rerun must resume from a checkpoint, not start over.
  _wait_for_step(workdir, 9, proc)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, out[-2000:]
    assert "Preempted: saved a checkpoint at step" in out
  else:
    assert proc.returncode == -signal.SIGKILL
  rerun = _cli(workdir)
  out, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, out[-2000:]
  assert "Resuming from" in out
  assert _losses(workdir) == _losses(uninterrupted_long)


def test_saved_config_read_past_a_corrupt_latest_step(tmp_path):
  """read_config (init_from, a fine-tune's resume, plots) skips a step whose config is corrupt,
  and says so in one line when none is readable."""
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(**{"train.steps": 2, "checkpoint.every_steps": 1,
                                      "seed": 7}), workdir)
  directory, step = checkpointing.latest_step(workdir)
  assert step == 2 and checkpointing.read_config(workdir)["seed"] == 7
  configs = [os.path.join(directory, str(s), "config", "metadata") for s in (2, 1)]
  with open(configs[0], "w") as f:
    f.write("{not json")
  assert checkpointing.read_config(workdir)["seed"] == 7  # from step 1
  with open(configs[1], "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="has a readable config"):
    checkpointing.read_config(workdir)
