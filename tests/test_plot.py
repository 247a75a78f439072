"""Plots: curves from metrics.jsonl (the real run of test_tracking.py and hand-written files),
and attention maps whose weights match what jax.nn.dot_product_attention applies."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_tracking import trained_run

from lm_research import plot
from lm_research.data import tokenizer, tokenizer_training
from lm_research.models.softmax_attention import attention_weights

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

PNG = b"\x89PNG"


def write_metrics(workdir, records):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for record in records:
      f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
  return str(workdir)


@pytest.fixture(scope="module")
def run():
  return trained_run()


@pytest.fixture(scope="module")
def line_tokenizer(tmp_path_factory):
  """A SentencePiece model trained on one line (under 320 pieces: fits the tiny model)."""
  prefix = str(tmp_path_factory.mktemp("tok") / "tokenizer")
  tokenizer_training.train_sentencepiece(["To be, or not to be, that is the question: whether 'tis "
                                 "nobler in the mind to suffer"], prefix, 320, family="decoder")
  return prefix + ".model"


def test_curves_from_the_real_run(run, capsys):
  workdir, _ = run
  paths = plot.main(["plot", workdir])
  assert capsys.readouterr().out.split() == paths
  names = {os.path.basename(p) for p in paths}
  assert {"loss.png", "accuracy.png", "lr.png", "throughput.png"} <= names
  for path in paths:
    assert os.path.dirname(path) == os.path.join(workdir, "plots")
    with open(path, "rb") as f:
      assert f.read(4) == PNG
  series = plot.read_metrics(workdir)
  assert list(series["train/loss"][0]) == [1, 2, 3] and list(series["eval/loss"][0]) == [0, 3]


def test_metric_families():
  assert [plot.metric_family(k) for k in (
      "train/loss", "eval/mlm_loss", "eval/accuracy", "eval/f1", "train/learning_rate",
      "perf/tokens_per_sec", "perf/mfu", "train/grad_norm")] == [
          "loss", "loss", "accuracy", "accuracy", "lr", "throughput", "throughput", "other"]


def test_several_runs_share_a_figure_and_bad_files_fail_in_one_line(tmp_path):
  a = write_metrics(tmp_path / "a" / "run", [{"step": 1, "train/loss": 3.0},
                                             {"step": 2, "train/loss": None},
                                             {"step": 2, "train/loss": 2.5}, ""])
  b = write_metrics(tmp_path / "b" / "run", [{"step": 1, "train/loss": 4.0, "eval/loss": 4.5}])
  assert plot.run_labels([a, b]) == [os.path.join("a", "run"), os.path.join("b", "run")]
  steps, values = plot.read_metrics(a)["train/loss"]
  assert list(steps) == [1, 2] and list(values) == [3.0, 2.5]  # a re-logged step keeps its last
  paths = plot.plot_curves([a, b], plot.default_out([a, b]))
  assert paths == [str(tmp_path / "plots" / "loss.png")]
  bad = write_metrics(tmp_path / "bad", ['{"step": 1}', "not json"])
  with pytest.raises(ValueError, match="line 2 is not a JSON object"):
    plot.read_metrics(bad)
  with pytest.raises(ValueError, match="has no metrics.jsonl"):
    plot.plot_curves([str(tmp_path / "nowhere")], str(tmp_path))
  with pytest.raises(ValueError, match="usage"):
    plot.main(["plot"])


def test_attention_weights_match_jax_dot_product_attention():
  """Weights @ v == jax.nn.dot_product_attention, with GQA, padding + causal mask, bias, scale."""
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 5, 2, 8)).astype(np.float32)  # 2 kv heads for 4 query heads
  v = rng.normal(size=(2, 5, 2, 8)).astype(np.float32)
  bias = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
  mask = np.tril(np.ones((5, 5), bool))[None, None] & np.array(
      [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)[:, None, None, :]
  weights = attention_weights(q, k, mask_B1TS=mask, bias_BNTS=bias, scale=0.3)
  expected = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.3)
  got = np.einsum("bnts,bsnh->btnh", weights, np.repeat(v, 2, axis=2))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_attention_of_the_trained_run(run, line_tokenizer, tmp_path, capsys):
  """Recording leaves the model's outputs as they were; the weights are causal distributions;
  the CLI draws them (layers x heads) from the checkpoint alone (no config.json here)."""
  workdir, _ = run
  sentence = "To be, or not to be"
  model, _ = plot.load_trained_model(workdir)
  assert model.cfg.num_layers == 2 and not model.cfg.scan_layers
  ids = tokenizer.load_tokenizer(line_tokenizer, "decoder").encode(sentence)
  before = model(jnp.asarray([ids])).logits
  maps = plot.attention_maps(model, ids)
  np.testing.assert_array_equal(model(jnp.asarray([ids])).logits, before)  # model untouched
  assert maps.shape == (2, 2, len(ids), len(ids))  # layers x heads x T x T
  # Layer 0's weights again from its own projections: softmax(q k^T / sqrt(H)), causal.
  x = model.embeddings(jnp.asarray([ids]), jnp.arange(len(ids))[None], None, None)
  block = model.stack.layers.blocks[0]
  h = block.attn_norm(x)
  q = block.attn.query(h).reshape(1, len(ids), 2, -1)
  k = block.attn.key(h).reshape(1, len(ids), 2, -1)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.tril(np.ones((len(ids), len(ids)), bool)), logits, -np.inf)
  np.testing.assert_allclose(maps[0], jax.nn.softmax(logits, -1)[0], atol=1e-5)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  assert np.abs(np.triu(maps, 1)).max() == 0.0  # a decoder looks back only

  (path,) = plot.main(["plot", workdir, "--attention", f"--sentence={sentence}",
                       f"--tokenizer={line_tokenizer}", f"--out={tmp_path}"])
  assert capsys.readouterr().out.strip() == path
  with open(path, "rb") as f:
    assert f.read(4) == PNG
  with pytest.raises(ValueError, match="more than model.max_len=32"):
    plot.plot_attention(workdir, "to be " * 40, str(tmp_path), tokenizer_path=line_tokenizer)
  with pytest.raises(ValueError, match="--sentence is empty"):
    plot.plot_attention(workdir, " ", str(tmp_path), tokenizer_path=line_tokenizer)
