"""Sweeps: grid and seeded random expansion, run names, validation, picking up a half-done sweep,
launch commands, the W&B export and the agent entry. Nothing here trains: a fake trainer
(a few lines of Python) stands in for lm_research.main and writes metrics.jsonl."""

import csv
import json
import math
import os
import sys
import textwrap

import pytest
import yaml

from launch import sweep, sweep_spec

CONFIG = "configs/gpt_tiny.py"
GRID = {"method": "grid",
        "parameters": {"train.learning_rate": [1e-3, 3e-3], "model.num_layers": [2, 4]},
        "fixed": {"train.steps": 5, "data.source": "synthetic"}}
RANDOM = {"method": "random", "num_runs": 6, "seed": 0, "parameters": {
    "train.learning_rate": {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2},
    "train.warmup_steps": {"distribution": "int_uniform", "min": 0, "max": 10},
    "train.b1": {"distribution": "uniform", "min": 0.8, "max": 0.95},
    "train.schedule": ["linear", "cosine"]}}
# Stands in for `python -m lm_research.main`: records its call, then writes metrics.jsonl up to
# train.steps with an eval/loss that depends on the learning rate (so runs rank differently).
FAKE_TRAINER = textwrap.dedent("""
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    workdir = args["workdir"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(os.path.dirname(workdir), "calls.txt"), "a") as f:
      f.write(os.path.basename(workdir) + "\\n")
    steps, lr = int(args["config.train.steps"]), float(args["config.train.learning_rate"])
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for step in range(1, steps + 1):
        f.write(json.dumps({"step": step, "train/loss": 5.0 - step * lr * 100,
                            "eval/loss": 6.0 - lr * 100}) + "\\n")
""")


def write_sweep(tmp_path, spec, name="mysweep"):
  path = tmp_path / f"{name}.py"
  path.write_text(f"def get_sweep():\n  return {spec!r}\n")
  return str(path)


def test_grid_expands_to_the_product_in_order():
  runs = sweep_spec.expand(GRID)
  assert runs == [{"train.learning_rate": 1e-3, "model.num_layers": 2},
                  {"train.learning_rate": 1e-3, "model.num_layers": 4},
                  {"train.learning_rate": 3e-3, "model.num_layers": 2},
                  {"train.learning_rate": 3e-3, "model.num_layers": 4}]
  assert sweep_spec.unique_names(runs) == [
      "learning_rate=0.001,num_layers=2", "learning_rate=0.001,num_layers=4",
      "learning_rate=0.003,num_layers=2", "learning_rate=0.003,num_layers=4"]


def test_random_search_is_seeded_and_in_bounds():
  first, again = sweep_spec.expand(RANDOM), sweep_spec.expand(dict(RANDOM))
  assert first == again and len(first) == 6
  assert sweep_spec.expand(dict(RANDOM, seed=1)) != first
  for run in first:
    lr = run["train.learning_rate"]
    assert 1e-4 <= lr <= 1e-2 and lr == float(f"{lr:.4g}")  # rounded: names match values
    assert isinstance(run["train.warmup_steps"], int) and 0 <= run["train.warmup_steps"] <= 10
    assert 0.8 <= run["train.b1"] <= 0.95
    assert run["train.schedule"] in ("linear", "cosine")
  # log-uniform: draws spread over the decades, not bunched near the top
  assert min(math.log10(r["train.learning_rate"]) for r in sweep_spec.expand(
      dict(RANDOM, num_runs=40))) < -3.3


def test_names_disambiguate_clashing_keys_and_repeats():
  assert sweep_spec.run_name({"model.dropout_rate": 0.1, "train.dropout_rate": 0.2}) == \
      "model.dropout_rate=0.1,train.dropout_rate=0.2"
  assert sweep_spec.unique_names([{"a.b": 1}, {"a.b": 1}]) == ["b=1", "b=1-2"]
  assert sweep_spec.run_name({"data.train_path": "my data/*.txt"}) == "train_path=my-data--.txt"


@pytest.mark.parametrize("spec, message", [
    ({"method": "bayes", "parameters": {"a": [1]}}, "method='bayes'"),
    ({"method": "grid", "parameters": {}}, "non-empty dict"),
    ({"method": "grid", "parameters": {"a": []}}, "has no values"),
    ({"method": "grid", "parameters": {"a": {"distribution": "uniform"}}}, "must be a list"),
    ({"method": "random", "parameters": {"a": [1]}}, "num_runs"),
    ({"method": "random", "num_runs": 2, "parameters": {
        "a": {"distribution": "log_uniform", "min": 0, "max": 1}}}, "min > 0"),
    ({"method": "random", "num_runs": 2, "parameters": {
        "a": {"distribution": "uniform", "min": 2, "max": 1}}}, "min < max"),
    ({"method": "grid", "parameters": {"a": [1]}, "fixed": {"a": 2}}, "both swept and fixed"),
    ({"method": "grid", "parameters": {"a": [1]}, "grid": {}}, "unknown sweep keys"),
])
def test_bad_sweeps_fail_in_one_line(spec, message):
  with pytest.raises(ValueError, match=message) as e:
    sweep_spec.validate(spec)
  assert "\n" not in str(e.value)


def test_bad_keys_and_types_fail_before_any_run(tmp_path):
  bad_key = write_sweep(tmp_path, {"method": "grid", "parameters": {"train.learing_rate": [1.0]}})
  with pytest.raises(ValueError, match="train.learing_rate is not a config key"):
    sweep.plan(CONFIG, bad_key, str(tmp_path / "s"))
  bad_type = write_sweep(tmp_path, {"method": "grid", "parameters": {"model.num_layers": ["x"]}})
  with pytest.raises(ValueError, match="model.num_layers cannot be 'x'"):
    sweep.plan(CONFIG, bad_type, str(tmp_path / "s"))
  with pytest.raises(ValueError, match="does not exist"):
    sweep.plan(CONFIG, str(tmp_path / "missing.py"))
  with pytest.raises(SystemExit):  # argparse: one usage line
    sweep.main(["--config", CONFIG, "--sweep", bad_key, "--steps=3"])


def test_runs_have_own_workdirs_one_group_and_the_overrides(tmp_path):
  spec, name, workdir, runs = sweep.plan(CONFIG, write_sweep(tmp_path, GRID), str(tmp_path / "s"),
                                         ["--config.train.batch_size=8"])
  assert name == "mysweep" and len({r.workdir for r in runs}) == 4
  run = runs[3]
  assert run.workdir == str(tmp_path / "s" / "learning_rate=0.003,num_layers=4")
  assert run.steps == 5
  assert run.command[:3] == [sys.executable, "-m", "lm_research.main"]
  for arg in ["--config=configs/gpt_tiny.py", f"--workdir={run.workdir}",
              "--config.train.batch_size=8", "--config.train.steps=5",
              "--config.data.source=synthetic", "--config.train.learning_rate=0.003",
              "--config.model.num_layers=4", "--config.wandb.group=mysweep",
              "--config.wandb.name=mysweep/learning_rate=0.003,num_layers=4"]:
    assert arg in run.args


def test_half_done_sweep_reruns_only_unfinished_runs_and_summarises(tmp_path, monkeypatch,
                                                                    capsys):
  sweep_file = write_sweep(tmp_path, GRID)
  out = tmp_path / "s"
  _, _, _, runs = sweep.plan(CONFIG, sweep_file, str(out))
  # Run 0 finished, run 1 stopped at step 2 (its rerun resumes), runs 2 and 3 never started.
  for run, last in ((runs[0], 5), (runs[1], 2)):
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
      for step in range(1, last + 1):
        f.write(json.dumps({"step": step, "train/loss": 4.0, "eval/loss": 6.5}) + "\n")
  args = ["--config", CONFIG, "--sweep", sweep_file, "--workdir", str(out)]
  assert sweep.main(args + ["--dry_run"]) == 0
  printed = capsys.readouterr().out
  assert "4 runs" in printed and "1 finished" in printed
  assert f"{runs[0].name}: finished" in printed and f"{runs[1].name}: to run (at step 2)" in printed
  assert sweep.main(args + ["--print_commands=local"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and all(r.workdir in line for r, line in zip(runs[1:], lines))

  trainer = tmp_path / "fake_trainer.py"
  trainer.write_text(FAKE_TRAINER)
  monkeypatch.setattr(sweep, "MAIN", [sys.executable, str(trainer)])
  assert sweep.main(args + ["--parallel=2"]) == 0
  assert sorted((out / "calls.txt").read_text().split()) == sorted(r.name for r in runs[1:])
  assert sweep.main(args) == 0  # all finished now: nothing runs again
  assert len((out / "calls.txt").read_text().split()) == 3

  with open(out / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["done"] * 4
  assert {r["run"] for r in rows} == {r.name for r in runs}
  assert rows[0]["train.learning_rate"] == "0.003"  # best eval/loss first (higher lr here)
  assert float(rows[0]["eval/loss"]) == pytest.approx(5.7)
  md = (out / "summary.md").read_text()
  assert ("| run | status | step | train.learning_rate | model.num_layers | train/loss "
          "| eval/loss |") in md
  assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_run_is_reported_and_sets_the_exit_status(tmp_path, monkeypatch):
  sweep_file = write_sweep(tmp_path, dict(GRID, parameters={"train.learning_rate": [1e-3]}))
  trainer = tmp_path / "failing.py"
  trainer.write_text("import sys; print('boom'); sys.exit(3)\n")
  monkeypatch.setattr(sweep, "MAIN", [sys.executable, str(trainer)])
  out = tmp_path / "s"
  assert sweep.main(["--config", CONFIG, "--sweep", sweep_file, "--workdir", str(out)]) == 1
  run_dir = out / "learning_rate=0.001"
  assert "boom" in (run_dir / "train.log").read_text()
  assert "failed (3)" in (out / "summary.md").read_text()


def test_cluster_commands_and_wandb_export(tmp_path, capsys):
  sweep_file = write_sweep(tmp_path, RANDOM, "rand")
  args = ["--config", CONFIG, "--sweep", sweep_file, "--workdir", str(tmp_path / "r")]
  sweep.main(args + ["--print_commands=slurm"])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6
  assert all("sbatch --job-name=" in line
             and " launch/gpu_slurm.sbatch --config=configs/gpt_tiny.py" in line for line in lines)
  sweep.main(args + ["--print_commands=tpu"])
  assert all(line.startswith("launch/tpu_vm.sh --config=") for line in
             capsys.readouterr().out.splitlines())

  exported = tmp_path / "rand.yaml"
  assert sweep.main(args + [f"--export_wandb={exported}"]) == 0
  doc = yaml.safe_load(exported.read_text())
  assert doc["method"] == "random" and doc["run_cap"] == 6 and doc["name"] == "rand"
  assert doc["metric"] == {"name": "eval/loss", "goal": "minimize"}
  assert doc["parameters"]["config.train.learning_rate"] == {
      "distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
  assert doc["parameters"]["config.train.schedule"] == {"values": ["linear", "cosine"]}
  assert doc["command"][:5] == ["${env}", "${interpreter}", "-m", "launch.sweep", "--agent"]
  assert doc["command"][-1] == "${args}"


def test_wandb_agent_run_lands_in_the_local_runs_workdir(tmp_path, monkeypatch):
  sweep_file = write_sweep(tmp_path, GRID)
  _, _, _, runs = sweep.plan(CONFIG, sweep_file, str(tmp_path / "s"))
  calls = []
  monkeypatch.setattr(sweep.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
  # What `wandb agent` passes: every parameter as text, fixed ones too, in its own order.
  assert sweep.main(["--agent", "--config", CONFIG, "--sweep", sweep_file, "--workdir",
                     str(tmp_path / "s"), "--config.model.num_layers=4",
                     "--config.train.learning_rate=0.003", "--config.train.steps=5",
                     "--config.data.source=synthetic"]) == 0
  assert f"--workdir={runs[3].workdir}" in calls[0]
  assert "--config.wandb.group=mysweep" in calls[0]
