"""The Grain pipeline: batch contracts, packing without cross-document attention, determinism,
checkpoint restore, per-process shards and epochs, on an in-memory corpus."""

import json

import grain
import numpy as np
import pytest

from lm_research.data import packing, pipeline
from lm_research.objectives import masked_lm, span_corruption


class NumberTokenizer:
  """Word ``n`` (an integer) is id 7 + n, so an id tells its document and place exactly.

  Ids 0..6 are pad, unk, bos, eos, cls, sep, mask; the last 100 ids are sentinels.
  """

  pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)

  def __init__(self, num_words: int):
    self.vocab_size = 7 + num_words + 100
    self.sentinel_ids = list(range(self.vocab_size - 1, self.vocab_size - 101, -1))

  def encode(self, text):
    return [7 + int(w) for w in text.split()]

  def is_word_start(self, i):
    return True


def _corpus(num_docs=23, seed=0, max_len=150, line_len=(1, 9)):
  """Documents of consecutive integers, in lines; some one-line, some longer than a row, one
  blank. Returns (records, token ids per document)."""
  rng = np.random.default_rng(seed)
  records, docs, next_word = [], [], 0
  for d in range(num_docs):
    n = 0 if d == 5 else (int(rng.integers(1, 8)) if d % 4 == 0 else int(rng.integers(1, max_len)))
    words = list(range(next_word, next_word + n))
    next_word += n
    lines, k = [], 0
    while k < n:
      step = int(rng.integers(*line_len))
      lines.append(" ".join(map(str, words[k:k + step])))
      k += step
    records.append({"text": "\n".join(lines) if n else "  \n "})
    docs.append([7 + w for w in words])
  return records, docs


RECORDS, DOCS = _corpus()
TOK = NumberTokenizer(sum(map(len, DOCS)))
DOC_OF = {t: d for d, doc in enumerate(DOCS) for t in doc}
SEQ = 32


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(xs, ys):
  return len(xs) == len(ys) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


def _causal_segments(batches):
  """Every (row, segment) as (input_ids, targets, positions), checking the row layout."""
  out = []
  for b in batches:
    seg, mask = b["segment_ids"], b["loss_mask"]
    np.testing.assert_array_equal(mask, (seg > 0).astype(np.float32))
    for key in ("input_ids", "targets", "positions"):
      assert not b[key][seg == 0].any()  # padding is all zeros
    for r in range(seg.shape[0]):
      for s in np.unique(seg[r][seg[r] > 0]):
        (cols,) = np.nonzero(seg[r] == s)
        assert (np.diff(cols) == 1).all()  # a segment is one contiguous run
        out.append(tuple(b[k][r, cols] for k in ("input_ids", "targets", "positions")))
  return out


def _check_documents(segments, docs=None):
  """Each segment lies inside one document (so segment equality never lets a token attend to
  another document); targets are the next tokens; all documents are covered exactly once.
  Returns the documents seen, in order of their first tokens."""
  covered, order = [], []
  for inputs, targets, positions in segments:
    np.testing.assert_array_equal(positions, np.arange(len(inputs)))
    np.testing.assert_array_equal(targets[:-1], inputs[1:])  # next token, same document
    body = [t for t in targets if t != TOK.eos_id]
    assert TOK.eos_id not in targets[:-1].tolist()  # eos only ends a segment
    owners = {DOC_OF[t] for t in body} | ({DOC_OF[t] for t in inputs[1:]} if len(inputs) > 1
                                          else set())
    assert len(owners) <= 1, owners
    if inputs[0] == TOK.bos_id:  # a document starts here
      order.append(DOC_OF[targets[0]] if targets[0] != TOK.eos_id else None)
    else:  # a continuation: its first input is the token before its first target
      assert inputs[0] + 1 == targets[0] or targets[0] == TOK.eos_id
    if targets[-1] == TOK.eos_id:  # ... and the document ends with eos
      covered.append(("eos", DOC_OF[inputs[-1]] if inputs[-1] != TOK.bos_id else None))
    covered += body
  expected = [t for doc in (DOCS if docs is None else docs) for t in doc]
  assert sorted(t for t in covered if not isinstance(t, tuple)) == sorted(expected)
  ends = sorted(d for kind, d in (t for t in covered if isinstance(t, tuple)))
  assert ends == sorted(DOCS.index(doc) for doc in (DOCS if docs is None else docs) if doc)
  return order


def _make(objective, **kw):
  # A short shuffle window keeps start-up fast (the default fills 1024 examples first).
  kw = {"seq_len": SEQ, "batch_size": 4, "seed": 0, "shuffle_window": 64, **kw}
  return pipeline.make_pipeline(RECORDS, TOK, objective, **kw)


@pytest.mark.parametrize("objective", pipeline.OBJECTIVES)
def test_batch_contract(objective):
  batch = next(_make(objective))
  t_dec = span_corruption.random_spans_helper(SEQ)[1]
  spec = {
      "causal_lm": {k: (np.int32, (4, SEQ)) for k in ("input_ids", "targets", "segment_ids",
                                                        "positions")}
                   | {"loss_mask": (np.float32, (4, SEQ))},
      "mlm_nsp": {k: (np.int32, (4, SEQ)) for k in ("input_ids", "token_type_ids",
                                                     "attention_mask", "mlm_targets")}
                 | {"mlm_weights": (np.float32, (4, SEQ)), "nsp_labels": (np.int32, (4,)),
                    "nsp_weights": (np.float32, (4,)),
                    "mlm_positions": (np.int32, (4, masked_lm.default_max_predictions(SEQ)))},
      "span_corruption": {k: (np.int32, (4, SEQ)) for k in ("input_ids", "segment_ids",
                                                             "positions")}
                         | {k: (np.int32, (4, t_dec)) for k in (
                             "decoder_input_ids", "targets", "decoder_segment_ids",
                             "decoder_positions")}
                         | {"loss_mask": (np.float32, (4, t_dec))},
  }[objective]
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
      k: (np.dtype(d), s) for k, (d, s) in spec.items()}


def test_causal_packing_covers_documents_without_crossing_them():
  # Batch size 1 drops nothing; a small window also exercises the row shuffle.
  it = _make("causal_lm", batch_size=1, num_epochs=1, shuffle_window=8)
  _check_documents(_causal_segments(list(it)))


def test_causal_eval_pads_the_last_batch_with_empty_rows():
  rows = -(-sum(len(doc) + 1 for doc in DOCS if doc) // SEQ)  # concatenated, then cut
  batch_size = next(b for b in (8, 7, 6, 5) if rows % b)
  batches = list(pipeline.make_eval_pipeline(RECORDS, TOK, "causal_lm", seq_len=SEQ,
                                             batch_size=batch_size))
  assert len(batches) == -(-rows // batch_size)
  _check_documents(_causal_segments(batches))
  last = batches[-1]
  empty_rows = ~last["segment_ids"].any(axis=1)
  assert empty_rows.sum() == len(batches) * batch_size - rows
  assert not last["loss_mask"][empty_rows].any()


@pytest.mark.parametrize("process_count", [2, 3])
def test_process_shards_are_disjoint_and_cover_everything(process_count):
  seen = []
  for p in range(process_count):
    it = _make("causal_lm", batch_size=1, num_epochs=1, seed=3, process_index=p,
               process_count=process_count)
    segments = _causal_segments(list(it))
    seen.append({DOC_OF[t] for _, targets, _ in segments for t in targets if t != TOK.eos_id})
    _check_documents(segments, [DOCS[d] for d in sorted(seen[-1])])  # whole documents
  assert sum(map(len, seen)) == len(set().union(*seen))  # disjoint
  assert set().union(*seen) == {d for d, doc in enumerate(DOCS) if doc}


@pytest.mark.parametrize("objective", pipeline.OBJECTIVES)
def test_seeds_determine_batches(objective):
  first = _take(_make(objective, seed=7), 3)
  assert _equal(first, _take(_make(objective, seed=7), 3))
  assert not _equal(first, _take(_make(objective, seed=8), 3))


@pytest.mark.parametrize("objective", pipeline.OBJECTIVES)
def test_restored_iterator_continues_exactly(objective):
  it = _make(objective, shuffle_window=16)
  _take(it, 5)
  # Through JSON, as Grain's checkpoint handler stores it.
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 4)
  restored = _make(objective, shuffle_window=16)
  restored.set_state(state)
  assert _equal(_take(restored, 4), expected)


def test_concat_then_split_restores_from_json_at_a_row_boundary():
  # The first document fills row 0 exactly, so the saved state holds "no remainder" (-1, -1),
  # which JSON turns into a list; grain 0.2.18 alone would then drop the next document.
  examples = [{"input_ids": np.arange(s, s + n), "targets": np.arange(s, s + n) + 1}
              for s, n in [(10, 4), (20, 3), (30, 6), (40, 2)]]
  ds = packing.concat_then_split(grain.MapDataset.source(examples).to_iter_dataset(),
                                 {"input_ids": 4, "targets": 4})
  it = iter(ds)
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = list(it)
  restored = iter(ds)
  restored.set_state(state)
  assert _equal(list(restored), expected)
  np.testing.assert_array_equal(expected[0]["input_ids"], [20, 21, 22, 30])


def _document_starts(batches):
  """The documents of a causal stream in the order they start (a bos opens a document)."""
  return [DOC_OF[targets[0]] for inputs, targets, _ in _causal_segments(batches)
          if inputs[0] == TOK.bos_id]


def test_new_epoch_new_order():
  it = _make("causal_lm", batch_size=1, num_epochs=2, shuffle_window=0, seed=1)
  order = _document_starts(list(it))
  n = sum(1 for doc in DOCS if doc)
  first, second = order[:n], order[n:]
  assert sorted(first) == sorted(second) == sorted(d for d, doc in enumerate(DOCS) if doc)
  assert first != second


def test_mlm_new_epoch_new_masks_and_one_line_documents():
  records = [{"text": " ".join(str(w) for w in range(10 * d, 10 * d + 10))} for d in range(12)]
  tok = NumberTokenizer(120)
  it = pipeline.make_pipeline(records, tok, "mlm_nsp", seq_len=64, batch_size=1, seed=0,
                              shuffle=False, num_epochs=2, shuffle_window=0)
  examples = list(it)
  assert len(examples) == 24  # a one-line document is segment A with a random B, once
  assert all(ex["nsp_labels"][0] == 1 for ex in examples)
  changed = 0
  for a, b in zip(examples[:12], examples[12:]):
    orig_a, orig_b = (np.where(x["mlm_weights"] > 0, x["mlm_targets"], x["input_ids"])[0]
                      for x in (a, b))
    np.testing.assert_array_equal(orig_a[:12], orig_b[:12])  # same document, same segment A
    changed += not np.array_equal(a["mlm_weights"], b["mlm_weights"])
  assert changed >= 10


def test_mlm_eval_is_deterministic_complete_and_padded():
  def run():
    return list(pipeline.make_eval_pipeline(RECORDS, TOK, "mlm_nsp", seq_len=SEQ, batch_size=5,
                                            seed=0))
  batches = run()
  assert _equal(batches, run())
  train = list(_make("mlm_nsp", batch_size=1, shuffle=False, num_epochs=1, shuffle_window=0))
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  weights = rows["nsp_weights"]
  assert weights.sum() == len(train) and weights[-1] == 0  # padded, nothing lost
  real = {k: v[weights > 0] for k, v in rows.items()}
  assert _equal([real], [{k: np.concatenate([b[k] for b in train]) for k in train[0]}])
  for key in ("mlm_weights", "attention_mask", "input_ids"):  # padding rows are all zero
    assert not rows[key][weights == 0].any()


def test_worker_processes_are_deterministic_and_restorable():
  it = _make("span_corruption", worker_count=2)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 2)
  it.close()
  restored = _make("span_corruption", worker_count=2)
  restored.set_state(state)
  assert _equal(_take(restored, 2), expected)
  restored.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"objective": "mlm"}, "Unknown objective"),
    ({"source": []}, "no documents"),
    ({"masking": 0.2}, "Unknown option"),
    ({"process_index": 2, "process_count": 2}, "process_index"),
])
def test_bad_arguments_fail_clearly(kwargs, message):
  args = {"source": RECORDS, "objective": "mlm_nsp", **kwargs}
  with pytest.raises(ValueError, match=message):
    pipeline.make_pipeline(args.pop("source"), TOK, args.pop("objective"), seq_len=SEQ,
                           batch_size=2, seed=0, **args)
