"""Packed fine-tuning rows: placement by hand, and losses equal to the unpacked rows' for
classification (each pooling), tagging and prompt/response, on the same weights."""

import math

import numpy as np
import pytest

from configs import finetune_classification
from lm_research import experiment
from lm_research.data import example_packing, length_buckets
from lm_research.models import ModelConfig, build_model
from lm_research.objectives import causal_lm, classification
from test_finetune import sentiment_rows, task_config, write_jsonl

WIDTH = 16


def _row(n, i, rng, *, label=True, tags=False, lm=False):
  """A row of ``n`` real tokens (random ids), padded to WIDTH, in a task's format."""
  ids = np.zeros(WIDTH, np.int32)
  ids[:n] = rng.integers(5, 60, n)
  mask = (np.arange(WIDTH) < n).astype(np.int32)
  if lm:
    return {"input_ids": ids, "targets": np.roll(ids, -1) * mask, "segment_ids": mask,
            "positions": np.arange(WIDTH, dtype=np.int32) * mask,
            "loss_mask": (mask * (np.arange(WIDTH) >= n // 2)).astype(np.float32),
            "index": np.int32(i)}
  row = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros(WIDTH, np.int32),
         "index": np.int32(i)}
  if tags:
    row["tags"] = (rng.integers(0, 3, WIDTH) * mask).astype(np.int32)
    row["tag_weights"] = (mask * (rng.random(WIDTH) < 0.7)).astype(np.float32)
  if label:
    row["label"], row["weight"] = np.int32(i % 3), np.float32(1)
  return row


def _stack(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_rows_go_longest_first_into_the_fullest_row_they_fit():
  assert example_packing._bins(np.array([5, 3, 4, 2]), 8) == [[0, 1], [2, 3]]
  assert example_packing._bins(np.array([8, 1, 7]), 8) == [[0], [2, 1]]


def test_a_packed_row_holds_segments_positions_and_per_example_fields():
  rng = np.random.default_rng(0)
  rows = [_row(n, i, rng) for i, n in enumerate([9, 4, 6])]
  packed = example_packing.pack(length_buckets.PreparedRows(rows), 4, 8)
  f = packed.fields
  assert f["segment_ids"].shape == (2, WIDTH) and f["label"].shape == (2, 2)
  np.testing.assert_array_equal(f["segment_ids"][0], [1] * 9 + [2] * 6 + [0])
  np.testing.assert_array_equal(f["positions"][0], list(range(9)) + list(range(6)) + [0])
  np.testing.assert_array_equal(f["input_ids"][0, 9:15], rows[2]["input_ids"][:6])
  assert f["segment_starts"].tolist() == [[0, 9], [0, 0]]
  assert f["segment_ends"].tolist() == [[9, 15], [4, 0]]
  assert f["index"].tolist() == [[0, 2], [1, 0]] and f["weight"].tolist() == [[1, 1], [1, 0]]


def _model(family, head, **kw):
  cfg = ModelConfig(family=family, vocab_size=64, d_model=16, num_layers=2, num_heads=2,
                    d_ff=32, max_len=WIDTH, head=head, num_labels=3, dropout_rate=0.0,
                    type_vocab_size=2 if family == "encoder" else 0, **kw)
  return build_model(cfg, 0)


def _packed_and_unpacked(rows, numerators, model):
  packed = example_packing.pack(length_buckets.PreparedRows(rows), 4, 8)
  assert len(packed) < len(rows)
  return numerators(model, packed.fields, None, 0.0), numerators(model, _stack(rows), None, 0.0)


@pytest.mark.parametrize("family,pooling,pooler", [("encoder", "cls", True),
                                                    ("encoder", "mean", False),
                                                    ("decoder", "cls", False)])
def test_packed_classification_loss_equals_unpacked(family, pooling, pooler):
  rng = np.random.default_rng(1)
  rows = [_row(n, i, rng) for i, n in enumerate([7, 3, 5, 9, 2, 4])]
  model = _model(family, "sequence_classification", pooling=pooling, pooler=pooler)
  got, expected = _packed_and_unpacked(rows, classification.sequence_numerators, model)
  for k in expected:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, err_msg=k)


def test_packed_tagging_loss_equals_unpacked():
  rng = np.random.default_rng(2)
  rows = [_row(n, i, rng, label=False, tags=True) for i, n in enumerate([6, 3, 8, 5, 2])]
  model = _model("encoder", "token_classification")
  got, expected = _packed_and_unpacked(rows, classification.token_numerators, model)
  for k in expected:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, err_msg=k)


def test_packed_prompt_response_loss_equals_unpacked():
  rng = np.random.default_rng(3)
  rows = [_row(n, i, rng, lm=True) for i, n in enumerate([6, 3, 8, 5, 4])]
  model = _model("decoder", "lm", position="rope")
  got, expected = _packed_and_unpacked(rows, causal_lm.loss_numerators, model)
  for k in expected:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, err_msg=k)


def test_epochs_count_packed_rows_and_packing_needs_buckets(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(64, 0))
  c = task_config(finetune_classification, path, path, steps=0, epochs=2.0, batch_size=8,
                  seq_len=32)
  c.data.pack_examples = True
  exp = experiment.make_experiment(c, workdir=str(tmp_path / "run"))
  packed = exp.open_split.rows("train", experiment.task_rows(exp), 32, 4, 8, pack=True)
  assert len(packed) < 64 / 2  # short toy sentences: several a row
  assert exp.config.train.steps == math.ceil(2 * len(packed) / 8)
  assert exp.optim_cfg.steps == exp.config.train.steps
  c.data.length_buckets = 0
  with pytest.raises(ValueError, match="needs data.length_buckets > 0"):
    experiment.make_experiment(c, workdir=str(tmp_path / "run"))
