"""Length-bucketed fine-tuning batches: cut widths by hand, every row once an epoch, exact
resume, process slices, and eval metrics equal to fixed-length rows on the same weights."""

import itertools

import jax
import numpy as np
import pytest

from configs import finetune_classification, finetune_tagging, gpt_tiny
from lm_research import checkpointing, experiment, sharding, train
from lm_research.data import length_buckets
from lm_research.optim import make_optimizer
from test_finetune import ner_sentences, sentiment_rows, task_config, write_conll, write_jsonl


def _rows(lengths, width=64):
  """Classification-like rows whose attention masks hold ``lengths`` real tokens."""
  rows = []
  for i, n in enumerate(lengths):
    ids = np.zeros(width, np.int32)
    ids[:n] = np.arange(1, n + 1)
    rows.append({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32),
                 "label": np.int32(i % 3), "weight": np.float32(1), "index": np.int32(i)})
  return rows


def _padded_tokens(lengths, buckets):
  return sum(next(b for b in buckets if b >= n) for n in lengths)


@pytest.mark.parametrize("seed", range(4))
def test_bucket_lengths_pad_least_as_an_exhaustive_search_finds(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.gamma(2, 10, size=60).astype(int) + 1
  width, multiple = 128, 8
  got = length_buckets.bucket_lengths(lengths, width, 3, multiple)
  rounded = sorted({min(width, max(multiple, -(-n // multiple) * multiple)) for n in lengths})
  best = min(_padded_tokens(lengths, sorted(set(c) | {rounded[-1]}))
             for c in itertools.combinations(rounded, 2))
  assert _padded_tokens(lengths, got) == best
  assert len(got) <= 4 and got[-1] == width and all(b % multiple == 0 for b in got)


def test_bucket_lengths_by_hand():
  assert length_buckets.bucket_lengths(np.arange(1, 101), 128, 4, 8) == (24, 48, 72, 104, 128)
  assert length_buckets.bucket_lengths(np.arange(1, 101), 512, 4, 128) == (128, 512)  # Pallas


def test_a_batch_is_cut_to_the_bucket_of_its_longest_row_and_filled_with_zero_rows():
  prepared = length_buckets.PreparedRows(_rows([3, 20, 5, 40, 7]))
  assert prepared.buckets == {64: (8, 24, 40, 64)}  # every distinct length rounded to 8
  batches = list(length_buckets.BucketedBatches(prepared, batch_size=2, seed=0, shuffle=False,
                                                finite=True))
  # Longest first: (40, 20) -> 40, (7, 5) -> 8, (3, filler) -> 8.
  assert [b["input_ids"].shape for b in batches] == [(2, 40), (2, 8), (2, 8)]
  assert [list(b["index"]) for b in batches] == [[3, 1], [4, 2], [0, 0]]
  assert batches[-1]["weight"].tolist() == [1.0, 0.0]
  assert not batches[-1]["attention_mask"][1].any()
  np.testing.assert_array_equal(batches[1]["input_ids"][0], [1, 2, 3, 4, 5, 6, 7, 0])


def test_training_order_sees_every_row_once_an_epoch_and_resumes_exactly():
  lengths = np.random.default_rng(0).integers(1, 64, size=45)
  prepared = length_buckets.PreparedRows(_rows(lengths))

  def make():
    return length_buckets.BucketedBatches(prepared, batch_size=8, seed=3, shuffle=True,
                                          finite=False)

  batches = make()
  first_epoch = [next(batches) for _ in range(6)]  # ceil(45 / 8) batches
  seen = np.concatenate([b["index"][b["weight"] > 0] for b in first_epoch])
  assert sorted(seen.tolist()) == list(range(45))
  for b in first_epoch:  # each batch is cut to the bucket of its longest row
    longest = int(lengths[b["index"][b["weight"] > 0]].max())
    assert b["input_ids"].shape[1] == next(x for x in prepared.buckets[64] if x >= longest)
  state = batches.get_state()
  after = [next(batches) for _ in range(4)]
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed) for _ in range(4)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert [list(b["index"]) for b in after[:2]] != [list(b["index"]) for b in first_epoch[:2]]


def test_each_process_takes_its_slice_of_the_same_global_batch():
  prepared = length_buckets.PreparedRows(_rows(np.arange(1, 30)))
  whole = length_buckets.BucketedBatches(prepared, batch_size=8, seed=1, shuffle=True,
                                         finite=False)
  parts = [length_buckets.BucketedBatches(prepared, batch_size=8, seed=1, shuffle=True,
                                          finite=False, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(5):
    expected = next(whole)
    got = [next(p) for p in parts]
    for k in expected:
      np.testing.assert_array_equal(expected[k], np.concatenate([g[k] for g in got]))


def test_old_fixed_row_positions_are_refused_in_one_line():
  batches = length_buckets.BucketedBatches(length_buckets.PreparedRows(_rows([3])), batch_size=1,
                                           seed=0, shuffle=True, finite=False)
  with pytest.raises(ValueError, match="length_buckets=0"):
    batches.set_state({"shards": [{}]})


def test_fitting_length_holds_99_percent_rounded_up_to_8():
  lengths = list(range(1, 101))  # 99th percentile 99.01 -> 104, capped at the width 100
  chosen, seen = length_buckets.fitting_length(list(range(100)),
                                               lambda r, i: _rows([lengths[i]], 100), 100)
  assert chosen == 100 and seen.max() == 100
  chosen, _ = length_buckets.fitting_length(list(range(50)),
                                            lambda r, i: _rows([lengths[i]], 100), 100)
  assert chosen == 56  # 99th percentile of 1..50 is 49.51


def _eval_metrics(config, workdir):
  exp = experiment.make_experiment(config, workdir=workdir)
  tx, schedule = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh):
    graphdef, state, state_sh = experiment.create_train_state(exp, tx)
    _, evaluate = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
    return experiment.run_eval(exp, evaluate, state.params, graphdef), exp


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "tagging"])
def test_eval_on_bucketed_batches_equals_fixed_length_rows(tmp_path, task):
  """Same weights, same eval set: cutting rows to buckets changes no metric."""
  if task == "classification":
    path = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(40, 0))
    module = finetune_classification
  else:
    path = write_conll(tmp_path / "d.conll", ner_sentences(40, 0))
    module = finetune_tagging
  results = {}
  for buckets in (4, 0):
    c = task_config(module, path, path, seq_len=32, batch_size=8)
    c.data.length_buckets = buckets
    c.eval.steps = 0
    results[buckets], _ = _eval_metrics(c, str(tmp_path / f"run_{buckets}"))
  assert results[4].keys() == results[0].keys()
  for k, v in results[0].items():
    assert results[4][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_seq_len_zero_is_chosen_from_the_training_rows(tmp_path, caplog):
  rows = sentiment_rows(40, 0)
  path = write_jsonl(tmp_path / "d.jsonl", rows)
  c = task_config(finetune_classification, path, path, seq_len=0, batch_size=8)
  with caplog.at_level("INFO"):
    exp = experiment.make_experiment(c, workdir=str(tmp_path / "run"))
  lengths = [len(exp.tokenizer.encode(r["text"])) + 2 for r in rows]  # [CLS] text [SEP]
  expected = min(32, int(np.ceil(np.percentile(lengths, 99) / 8) * 8))  # model.max_len 32
  assert exp.config.train.seq_len == expected
  assert "train.seq_len=0:" in caplog.text


def test_seq_len_zero_when_pretraining_is_a_one_line_error():
  c = gpt_tiny.get_config()
  c.train.seq_len = 0
  with pytest.raises(ValueError, match="for fine-tuning on real data"):
    experiment.make_experiment(c)


@pytest.mark.slow
def test_a_bucketed_fine_tune_resumes_bit_for_bit(tmp_path):
  """Stopped at step 2 and rerun to step 4 == run to step 4: the data position is a step count."""
  path = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(40, 0))
  params = {}
  for name, stops in (("whole", (4,)), ("resumed", (2, 4))):
    for steps in stops:
      c = task_config(finetune_classification, path, path, seq_len=32, batch_size=8, steps=steps)
      c.checkpoint.every_steps, c.eval.every_steps = 2, 0
      train.train_and_evaluate(c, str(tmp_path / name))
    params[name] = jax.tree.leaves(checkpointing.read_params(str(tmp_path / name)))
  for a, b in zip(params["whole"], params["resumed"]):
    np.testing.assert_array_equal(a, b)


def test_generation_on_bucketed_prompts_equals_full_width(monkeypatch):
  """Greedy outputs do not depend on cutting prompts to buckets (rows back in input order)."""
  from types import SimpleNamespace

  from flax import nnx

  from lm_research.models import ModelConfig, build_model
  from lm_research.tasks import generate

  model = build_model(ModelConfig(family="decoder", vocab_size=48, d_model=16, num_layers=1,
                                  num_heads=2, d_ff=32, max_len=64, dropout_rate=0.0), 0)
  graphdef, params = nnx.split(model)
  exp = SimpleNamespace(tokenizer=SimpleNamespace(pad_id=0, eos_id=1),
                        config=SimpleNamespace(data=SimpleNamespace(tokenizer_path="")))
  rng = np.random.default_rng(0)
  lengths = [3, 17, 5, 30, 9, 2, 12]
  ids = np.zeros((len(lengths), 32), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(2, 48, n)
  mask = (ids != 0).astype(np.int32)

  def run(rows):
    return generate.generate_ids(exp, graphdef, params, ids[rows], mask[rows], batch_size=3,
                                 max_new_tokens=6, eos_ids=(1,))

  assert length_buckets.bucket_lengths(np.array(lengths), 32, generate.PROMPT_BUCKETS, 8)[0] < 32
  bucketed = run(slice(None))
  monkeypatch.setattr(generate.length_buckets, "bucket_lengths", lambda *a: (32,))
  alone = [run(slice(i, i + 1))[0] for i in range(len(lengths))]  # each row by itself, uncut
  assert bucketed == alone
  assert len({tuple(o) for o in alone}) > 3  # rows differ, so a mix-up would show
