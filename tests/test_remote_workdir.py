"""A ``--workdir=gs://bucket/run`` run, against a fake GCS (tests/fake_gcs.py) on local disk.

Orbax's metadata and our files reach it through etils.epath and fsspec, its arrays through
TensorStore's GCS driver over HTTP, so a run that puts anything on a local path by mistake
leaves it in the process's (empty) working directory, where the test looks for it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import fake_gcs
import pytest

from lm_research import paths, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--config.model.vocab_size=320", "--config.model.d_model=32",
        "--config.model.num_layers=2", "--config.model.num_heads=4", "--config.model.d_ff=64",
        "--config.model.max_len=32", "--config.train.seq_len=32", "--config.train.batch_size=4",
        "--config.train.warmup_steps=1", "--config.train.log_every_steps=1",
        "--config.eval.every_steps=2", "--config.eval.steps=1",
        "--config.checkpoint.every_steps=2"]


def test_plain_paths_and_uris():
  """Local paths are made absolute and written through a rename; URIs are kept as they are."""
  assert paths.is_remote("gs://bucket/run") and paths.is_remote("s3://b/k")
  assert not paths.is_remote("runs/x") and not paths.is_remote("/tmp/a:b")
  assert not paths.is_remote("file:///tmp/x")
  assert paths.resolve("gs://bucket/run") == "gs://bucket/run"
  assert paths.resolve("runs/x") == os.path.join(os.getcwd(), "runs", "x")
  assert not paths.exists("")


def test_write_text_locally_leaves_no_temporary_file(tmp_path):
  target = tmp_path / "a" / "config.json"
  paths.write_text(str(target), "one")
  paths.write_text(str(target), "two")
  assert target.read_text() == "two" and os.listdir(target.parent) == ["config.json"]


def test_local_cache_is_under_xdg_cache_home(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  first = paths.local_cache("gs://bucket/run", "tfds")
  assert first.startswith(str(tmp_path / "lm_research")) and first.endswith("/tfds")
  assert first == paths.local_cache("gs://bucket/run", "tfds")
  assert first != paths.local_cache("gs://bucket/run2", "tfds")


def test_a_missing_filesystem_is_one_line():
  with pytest.raises(ValueError, match=r"^cannot open nosuchfs://b/run: this Python has no "
                                       r"nosuchfs:// filesystem; install an fsspec filesystem "
                                       r"for nosuchfs://, or use a local path$"):
    paths.check_filesystem("nosuchfs://b/run")
  paths.check_filesystem("runs/x")  # local: nothing to check


def test_a_gs_workdir_without_gcsfs_stops_before_any_work(tmp_path):
  """The command line names the packages to install in one line and writes nothing."""
  if importlib.util.find_spec("gcsfs"):
    pytest.skip("gcsfs is installed here")
  result = subprocess.run(
      [sys.executable, "-m", "lm_research.main", f"--config={ROOT}/configs/gpt_tiny.py",
       "--workdir=gs://bucket/run"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=ROOT, XDG_CACHE_HOME=str(tmp_path)))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: cannot open gs://bucket/run: this Python has no gs:// filesystem; pip install "
      "gcsfs google-cloud-storage, or use a local path"]
  assert os.listdir(tmp_path) == []


@pytest.fixture
def fake_fs(tmp_path):
  """The fake gs:// filesystem in this process (fsspec only, no server); its root folder."""
  fake_gcs.install_filesystem(str(tmp_path))
  yield tmp_path
  fake_gcs.uninstall_filesystem()


def test_metrics_on_an_object_store_are_rewritten_whole(fake_fs):
  """Remote metrics.jsonl: every write leaves the whole file; a resume drops later steps."""
  writer = writers.MetricsWriter("gs://bucket/run")
  for step in (1, 2, 3):
    writer.write(step, {"train/loss": float(step)})
  assert [r["step"] for r in writers.read_records("gs://bucket/run")] == [1, 2, 3]
  resumed = writers.MetricsWriter("gs://bucket/run")
  resumed.truncate_after(2)
  resumed.write(3, {"train/loss": 9.0})
  lines = (fake_fs / "bucket" / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 2.0},
      {"step": 3, "train/loss": 9.0}]


def test_plots_of_remote_runs_are_written_beside_them(fake_fs):
  """lm_research.plot reads metrics.jsonl from gs:// and writes its PNGs there."""
  from lm_research import plot  # noqa: PLC0415  (matplotlib only for this test)
  for name in ("a", "b"):
    writers.MetricsWriter(f"gs://bucket/{name}").write(1, {"train/loss": 2.0})
  assert plot.default_out(["gs://bucket/a", "gs://bucket/b"]) == "gs://bucket/plots"
  assert plot.run_labels(["gs://bucket/a", "gs://other/a"]) == ["gs://bucket/a", "gs://other/a"]
  with pytest.raises(ValueError, match="share no folder"):
    plot.default_out(["gs://bucket/a", "gs://other/b"])
  written = plot.plot_curves(["gs://bucket/a"], plot.default_out(["gs://bucket/a"]))
  assert written == ["gs://bucket/a/plots/loss.png"]
  assert (fake_fs / "bucket" / "a" / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small text corpus (documents of the bundled Shakespeare), so the tokenizer trains fast."""
  folder = tmp_path_factory.mktemp("corpus")
  source = os.path.join(ROOT, "data", "shakespeare", "train")
  text = open(os.path.join(source, sorted(os.listdir(source))[0]), encoding="utf-8").read()
  (folder / "train.txt").write_text(text[:40_000], encoding="utf-8")
  return str(folder / "train.txt")


def run(tmp_path, *args) -> subprocess.CompletedProcess:
  """lm_research.main with the fake GCS at tmp_path/gcs, from the empty folder tmp_path/cwd."""
  cwd = tmp_path / "cwd"
  cwd.mkdir(exist_ok=True)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", WANDB_MODE="disabled",
             LM_RESEARCH_HUGEPAGES="0", XLA_FLAGS="", XDG_CACHE_HOME=str(tmp_path / "cache"))
  result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fake_gcs.py"),
                           str(tmp_path / "gcs"), "--", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def losses(records):
  return {r["step"]: (r.get("train/loss"), r.get("eval/loss")) for r in records}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus):
  """gpt_tiny trained to step 2 on gs://bucket/run, then resumed to step 4 (its stderr), and
  trained to step 4 at once in a local workdir; the test folder."""
  tmp_path = tmp_path_factory.mktemp("remote")
  common = [f"--config={ROOT}/configs/gpt_tiny.py", f"--config.data.train_path={corpus}", *TINY]
  run(tmp_path, *common, "--workdir=gs://bucket/run", "--config.train.steps=2")
  resumed = run(tmp_path, *common, "--workdir=gs://bucket/run", "--config.train.steps=4")
  run(tmp_path, *common, f"--workdir={tmp_path / 'local'}", "--config.train.steps=4")
  return tmp_path, resumed.stderr


@pytest.mark.slow
def test_a_run_on_gs_writes_and_resumes_there(pretrained):
  """Stopped at step 2 and resumed to 4 on gs://, a run logs the losses of an uninterrupted
  local run; its checkpoints, metrics, config and tokenizer are in the bucket, nothing in the
  working directory."""
  tmp_path, log = pretrained
  assert "Resuming from gs://bucket/run/checkpoints/2." in log
  assert "No lock on gs://bucket/run" in log
  bucket_run, local = tmp_path / "gcs" / "bucket" / "run", tmp_path / "local"
  assert sorted(os.listdir(bucket_run)) == ["checkpoints", "config.json", "metrics.jsonl",
                                            "tokenizer.model"]
  assert sorted(os.listdir(bucket_run / "checkpoints")) == ["2", "4"]
  assert json.loads((bucket_run / "config.json").read_text())["train"]["steps"] == 4
  assert (bucket_run / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
  assert os.listdir(tmp_path / "cwd") == []
  remote = writers.read_records(str(bucket_run))
  assert [r["step"] for r in remote] == [0, 1, 2, 3, 4]
  assert losses(remote) == losses(writers.read_records(str(local)))


@pytest.mark.slow
def test_a_fine_tune_from_gs_writes_its_labels_and_plots_there(pretrained):
  """A classifier fine-tuned from init_from=gs://bucket/run into gs://bucket/classify reads
  the body and its tokenizer from the bucket and writes labels.json, its confusion matrix and
  predictions there."""
  tmp_path, _ = pretrained
  rows = "".join(f"good fine day {i}\tpos\nbad awful night {i}\tneg\n" for i in range(12))
  data = tmp_path / "data.tsv"
  data.write_text("text\tlabel\n" + rows)
  (tmp_path / "in.txt").write_text("good fine day\nbad awful night\n")
  common = [f"--config={ROOT}/configs/finetune_classification.py:decoder",
            "--workdir=gs://bucket/classify", "--config.init_from=gs://bucket/run",
            f"--config.data.train_path={data}", f"--config.data.eval_path={data}",
            "--config.train.steps=2", "--config.train.batch_size=4", "--config.train.seq_len=16",
            "--config.eval.every_steps=2"]
  run(tmp_path, *common)
  run(tmp_path, *common, "--mode=predict", f"--config.predict.input={tmp_path / 'in.txt'}")
  classify = tmp_path / "gcs" / "bucket" / "classify"
  assert json.loads((classify / "labels.json").read_text()) == {"field": "label",
                                                               "labels": ["neg", "pos"]}
  assert (classify / "plots" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
  assert json.loads((classify / "config.json").read_text())["data"]["tokenizer_path"] == (
      "gs://bucket/run/tokenizer.model")
  predictions = [json.loads(line) for line in (classify / "predictions.jsonl").read_text()
                 .splitlines()]
  assert [p["line"] for p in predictions] == [1, 2] and all("label" in p for p in predictions)
  assert os.listdir(tmp_path / "cwd") == []


def test_wandb_keeps_its_run_id_in_a_remote_workdir_and_its_files_local(fake_fs, monkeypatch):
  """The run id (what a resume needs) is in the bucket; W&B's own files go to the local cache."""
  from lm_research import tracking  # noqa: PLC0415  (W&B's module only for this test)
  monkeypatch.setenv("XDG_CACHE_HOME", str(fake_fs / "cache"))
  monkeypatch.delenv("WANDB_RUN_ID", raising=False)
  run_id = tracking._run_id("gs://bucket/run")  # noqa: SLF001
  assert (fake_fs / "bucket" / "run" / "wandb" / "run_id").read_text() == run_id + "\n"
  assert tracking._run_id("gs://bucket/run") == run_id  # noqa: SLF001
  local = tracking._local_dir("gs://bucket/run", "tracking", "W&B")  # noqa: SLF001
  assert local == paths.local_cache("gs://bucket/run", "tracking")
  assert local.startswith(str(fake_fs / "cache"))


@pytest.mark.slow
def test_a_corrupt_step_on_gs_is_quarantined_there(pretrained, corpus):
  """Step 4 unreadable in the bucket: it is moved (copied, then deleted: an object store has no
  renames) to checkpoints/quarantine/, and the run retrains steps 3-4 from step 2 alike."""
  tmp_path, _ = pretrained
  bucket = tmp_path / "gcs" / "bucket"
  shutil.copytree(bucket / "run", bucket / "corrupt")
  for folder, _, files in os.walk(bucket / "corrupt" / "checkpoints" / "4" / "state"):
    for name in files if os.path.basename(folder) == "d" else []:
      os.truncate(os.path.join(folder, name), os.path.getsize(os.path.join(folder, name)) // 2)
  result = run(tmp_path, f"--config={ROOT}/configs/gpt_tiny.py", *TINY,
               f"--config.data.train_path={corpus}",
               "--workdir=gs://bucket/corrupt", "--config.train.steps=4")
  assert "moved it to gs://bucket/corrupt/checkpoints/quarantine/4-unreadable-" in result.stderr
  checkpoints = bucket / "corrupt" / "checkpoints"
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "quarantine"]
  assert [n.split("-")[0] for n in os.listdir(checkpoints / "quarantine")] == ["4"]
  assert losses(writers.read_records(str(bucket / "corrupt"))) == losses(
      writers.read_records(str(bucket / "run")))
