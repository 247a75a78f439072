"""Example construction of the three objectives, checked against independent computations."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm_research.data import synthetic
from lm_research.models import ModelConfig, build_model
from lm_research.objectives import causal_lm, masked_lm, span_corruption
from lm_research.objectives.losses import cross_entropy_sums


class PieceTokenizer:
  """Whitespace words cut into pieces of <= 3 characters, hashed into a fixed vocabulary.

  Ids 0..6 are pad, unk, bos, eos, cls, sep, mask; word-start pieces get even offsets and
  continuation pieces odd ones, so ``is_word_start`` needs the id alone; the last 100 ids are
  sentinels, ``sentinel_ids[0]`` the highest (as T5's <extra_id_0>).
  """

  pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)

  def __init__(self, vocab_size: int = 2000):
    self.vocab_size = vocab_size
    self.sentinel_ids = list(range(vocab_size - 1, vocab_size - 101, -1))
    self.num_pieces = (vocab_size - 107) // 2

  def encode(self, text):
    ids = []
    for word in text.split():
      for j in range(0, len(word), 3):
        ids.append(7 + 2 * (zlib.crc32(word[j:j + 3].encode()) % self.num_pieces) + (j > 0))
    return ids

  def is_word_start(self, i):
    return 7 <= i < 7 + 2 * self.num_pieces and (i - 7) % 2 == 0


TOK = PieceTokenizer()
SPECIALS = set(masked_lm.special_token_ids(TOK))


def _text_documents(rng, num_docs, lines=(3, 30), words=(2, 12)):
  """Random documents of random letter words (1-9 letters, so 1-3 pieces each)."""
  def word():
    return "".join(rng.choice(list("abcdefghij"), rng.integers(1, 10)))
  return [[TOK.encode(" ".join(word() for _ in range(rng.integers(*words))))
           for _ in range(rng.integers(*lines))] for _ in range(num_docs)]


def _mlm_examples(builder, docs, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i, doc in enumerate(docs):
    out += builder(doc, i, len(docs), lambda j: docs[j], rng)
  return out


def _originals(ex):
  return np.where(ex["mlm_weights"] > 0, ex["mlm_targets"], ex["input_ids"])


# ---------------------------------------------------------------- masked LM + NSP

def test_mlm_selection_rates_specials_and_token_types():
  docs = _text_documents(np.random.default_rng(0), 40)
  builder = masked_lm.MlmNspBuilder(TOK, max_seq_len=128)
  assert builder.max_predictions == 20  # BERT's value for 128
  examples = _mlm_examples(builder, docs)
  n_candidates = n_selected = n_mask = n_kept = n_random = 0
  for ex in examples:
    orig, w, ids = _originals(ex), ex["mlm_weights"] > 0, ex["input_ids"]
    length = int(ex["attention_mask"].sum())
    assert ex["attention_mask"][:length].all() and not ex["attention_mask"][length:].any()
    seps = np.flatnonzero(orig[:length] == TOK.sep_id)
    assert orig[0] == TOK.cls_id and len(seps) == 2 and seps[1] == length - 1
    expected_types = np.zeros(128, np.int32)
    expected_types[seps[0] + 1:length] = 1  # B and the second [SEP]
    np.testing.assert_array_equal(ex["token_type_ids"], expected_types)
    special = np.zeros(128, bool)
    special[[0, *seps]] = True
    special[length:] = True
    assert not w[special].any() and (ids[special] == orig[special]).all()
    n = length - 3
    # BERT: round(15%) of the candidates, at least 1, at most max_predictions_per_seq.
    assert w.sum() == min(20, max(1, round(0.15 * n)))
    assert (ex["mlm_targets"][~w] == 0).all()
    n_candidates += n
    n_selected += w.sum()
    n_mask += (ids[w] == TOK.mask_id).sum()
    n_kept += (ids[w] == orig[w]).sum()
    replaced = ids[w][(ids[w] != TOK.mask_id) & (ids[w] != orig[w])]
    assert not SPECIALS & set(replaced.tolist())  # random tokens are never special
    n_random += len(replaced)
  # Rounding moves each example's count by <= 0.5 token; with > 50 candidates on average the
  # overall rate is within 0.5 / 50 = 0.01 of 15%.
  assert n_candidates / len(examples) > 50
  assert abs(n_selected / n_candidates - 0.15) < 0.01
  # 80/10/10 within 4 binomial standard deviations; a random pick equal to the original token
  # (probability 1/|non-special ids| per random pick) counts as kept.
  p_same = 1 / len(builder.random_ids)
  for count, p in [(n_mask, 0.8), (n_kept, 0.1 + 0.1 * p_same), (n_random, 0.1 * (1 - p_same))]:
    assert abs(count / n_selected - p) < 4 * np.sqrt(p * (1 - p) / n_selected), (count, p)


def test_mlm_cap_respected():
  docs = _text_documents(np.random.default_rng(1), 10)
  builder = masked_lm.MlmNspBuilder(TOK, max_seq_len=128, max_predictions_per_seq=5)
  for ex in _mlm_examples(builder, docs):
    n = int(ex["attention_mask"].sum()) - 3
    assert ex["mlm_weights"].sum() == min(5, max(1, round(0.15 * n)))


def test_mlm_positions_list_the_masked_positions():
  docs = _text_documents(np.random.default_rng(2), 10)
  builder = masked_lm.MlmNspBuilder(TOK, max_seq_len=64, max_predictions_per_seq=6)
  for ex in _mlm_examples(builder, docs):
    masked = np.flatnonzero(ex["mlm_weights"])
    assert ex["mlm_positions"].shape == (6,)
    np.testing.assert_array_equal(ex["mlm_positions"][:len(masked)], masked)
    assert not ex["mlm_positions"][len(masked):].any()  # padding points at [CLS], weight 0


def test_mlm_loss_at_gathered_positions_equals_full_logits():
  """Logits computed only at mlm_positions give the same sums as logits at every position."""
  cfg = ModelConfig(family="encoder", vocab_size=64, d_model=16, num_layers=1, num_heads=2,
                    d_ff=32, max_len=32, type_vocab_size=2, pre_norm=False, pooler=True,
                    head="pretraining")
  model = build_model(cfg, 0)
  batch = synthetic.synthetic_batch("mlm_nsp", step=0, seed=0, batch_size=3, seq_len=32,
                                    vocab_size=64)
  assert batch["mlm_positions"].shape == (3, 5)  # ceil(15% of 32)
  full = {k: v for k, v in batch.items() if k != "mlm_positions"}
  gathered = masked_lm.loss_numerators(model, batch, None, 0.0)
  reference = masked_lm.loss_numerators(model, full, None, 0.0)
  for term, value in reference.items():
    np.testing.assert_allclose(gathered[term], value, rtol=1e-5, err_msg=term)


@pytest.mark.slow  # imports torch and transformers, as tests/test_hf_parity.py
def test_mlm_nsp_loss_and_gradients_match_hugging_face(tmp_path):
  """The optimised MLM + NSP loss and its gradients (pooler, NSP head, token types, attention)
  equal BertForPreTraining's ``loss`` with ``labels`` and ``next_sentence_label``."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from flax import nnx  # noqa: PLC0415
  from lm_research.interop import bert, hf  # noqa: PLC0415
  from lm_research.objectives.registry import get_objective  # noqa: PLC0415
  torch.manual_seed(0)
  theirs = transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0))
  theirs.save_pretrained(tmp_path, safe_serialization=True)
  model, cfg = hf.load(tmp_path)
  batch = synthetic.synthetic_batch("mlm_nsp", step=0, seed=1, batch_size=4, seq_len=32,
                                    vocab_size=64)
  objective = get_objective("mlm_nsp")
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    nums = objective.numerators(nnx.merge(graphdef, p), batch, None, 0.0)
    return objective.ratios(nums, objective.denominators(batch))["loss"]

  ours, grads = jax.value_and_grad(loss)(params)
  t = lambda x: torch.tensor(np.asarray(x, np.int64))  # noqa: E731
  labels = np.where(batch["mlm_weights"] > 0, batch["mlm_targets"], -100)
  ref = theirs(t(batch["input_ids"]), attention_mask=t(batch["attention_mask"]),
               token_type_ids=t(batch["token_type_ids"]), labels=t(labels),
               next_sentence_label=t(batch["nsp_labels"])).loss
  ref.backward()
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
  named, flat = dict(theirs.named_parameters()), dict(nnx.to_flat_state(grads))
  checked = 0
  for entry in bert.entries(cfg):
    key = entry.keys[0]
    if not key.startswith(("bert.pooler", "cls.seq_relationship", "bert.embeddings.token_type",
                           "bert.encoder.layer.0.attention.self.query.weight")):
      continue
    expected = named[key].grad.numpy()
    np.testing.assert_allclose(np.asarray(flat[entry.ours][...]),
                               expected.T if entry.transpose else expected, atol=1e-6,
                               err_msg=key)
    checked += 1
  assert checked == 6


def test_whole_word_masking_masks_all_pieces_together():
  docs = _text_documents(np.random.default_rng(2), 20)
  builder = masked_lm.MlmNspBuilder(TOK, max_seq_len=64, whole_word_mask=True)
  multi_piece_words_masked = 0
  for ex in _mlm_examples(builder, docs):
    orig, w = _originals(ex), ex["mlm_weights"] > 0
    length = int(ex["attention_mask"].sum())
    assert w.sum() <= min(builder.max_predictions, max(1, round(0.15 * (length - 3))))
    word = []  # positions of the current word
    for p in range(1, length + 1):
      special = p == length or orig[p] in (TOK.cls_id, TOK.sep_id)
      if word and (special or TOK.is_word_start(orig[p])):
        assert w[word].all() or not w[word].any(), (word, w[word])
        multi_piece_words_masked += len(word) > 1 and w[word].all()
        word = []
      if not special:
        word.append(p)
  assert multi_piece_words_masked > 20


def test_word_groups_split_at_word_starts_and_special_gaps():
  candidates = np.array([1, 2, 3, 5, 6, 7])  # position 4 is [SEP]
  starts = np.array([True, False, True, False, True, False])
  groups = masked_lm.word_groups(candidates, starts)
  assert [g.tolist() for g in groups] == [[1, 2], [3], [5], [6, 7]]
  assert [g.tolist() for g in masked_lm.word_groups(candidates, None)] == [[p] for p in candidates]


def test_nsp_pairs_follow_bert():
  # Token = doc * 10000 + position: one-token lines never overshoot the target length, so
  # nothing is truncated and the A/B segments of a document must tile it exactly.
  num_docs = 30
  rng = np.random.default_rng(3)
  docs = [[[d * 10000 + k] for k in range(rng.integers(1, 300))] for d in range(num_docs)]
  labels = []
  for d, doc in enumerate(docs):
    pairs = masked_lm.create_segment_pairs(doc, d, num_docs, lambda j: docs[j],
                                           max_num_tokens=61, short_seq_prob=0.1, rng=rng)
    rebuilt = []
    for a, b, label in pairs:
      assert a and b and len(a) + len(b) <= 61
      assert {t // 10000 for t in a} == {d}
      if label == 0:  # B is the actual continuation of A
        assert b[0] == a[-1] + 1 and {t // 10000 for t in b} == {d}
        rebuilt += a + b
      else:  # B comes from another document; A's unused lines were put back
        assert {t // 10000 for t in b} != {d}
        rebuilt += a
      labels.append(label)
    assert rebuilt == [t for line in doc for t in line]
  # One-line chunks are always "not next", which adds a small excess over 0.5.
  assert abs(np.mean(labels) - 0.5) < 4 * np.sqrt(0.25 / len(labels)) + 0.03


def test_truncate_seq_pair_trims_the_longer_from_random_ends():
  rng = np.random.default_rng(4)
  a, b = list(range(10)), list(range(100, 103))
  ta, tb = masked_lm.truncate_seq_pair(a, b, 8, rng)
  assert len(ta) == 5 and tb == b  # only the longer one shrinks while it is longer
  start = a.index(ta[0])
  assert ta == a[start:start + 5]
  fronts = [masked_lm.truncate_seq_pair(a, [], 5, np.random.default_rng(s))[0][0] > 0
            for s in range(50)]
  assert any(fronts) and not all(fronts)  # both ends get cut, depending on the rng


def test_one_line_and_empty_documents():
  builder = masked_lm.MlmNspBuilder(TOK, max_seq_len=32)
  doc = [TOK.encode("just one line here")]
  examples = builder(doc, 0, 1, lambda j: doc, np.random.default_rng(0))
  assert len(examples) == 1 and examples[0]["nsp_labels"] == 1  # A + a random B (itself)
  assert builder([], 0, 1, lambda j: [], np.random.default_rng(0)) == []


# ---------------------------------------------------------------- causal LM

def test_causal_document_examples_and_finalize():
  (ex,) = causal_lm.document_examples([9, 8, 7], bos_id=TOK.bos_id, eos_id=TOK.eos_id)
  np.testing.assert_array_equal(ex["input_ids"], [TOK.bos_id, 9, 8, 7])
  np.testing.assert_array_equal(ex["targets"], [9, 8, 7, TOK.eos_id])
  assert causal_lm.document_examples([], bos_id=2, eos_id=3) == []
  seg = np.array([1, 1, 2, 0])
  out = causal_lm.finalize_packed({
      "input_ids": np.array([2, 9, 2, 0]), "targets": np.array([9, 3, 3, 0]),
      "input_ids_segment_ids": seg, "targets_segment_ids": seg,
      "input_ids_positions": np.array([0, 1, 0, 0]), "targets_positions": np.array([0, 1, 0, 0])})
  np.testing.assert_array_equal(out["loss_mask"], [1, 1, 1, 0])
  assert out["loss_mask"].dtype == np.float32 and out["segment_ids"].dtype == np.int32


# ---------------------------------------------------------------- span corruption

def _brute_force_lengths(inputs_length, density=0.15, mean_span=3):
  """Largest raw length whose corrupted inputs fit, by scanning every length."""
  best = None
  for t in range(1, 4 * inputs_length):
    noise = round(t * density)
    spans = round(noise / mean_span)
    if t - noise + spans + 1 <= inputs_length:
      best = (t, noise + spans + 1)
  return best


def test_random_spans_helper_matches_t5():
  assert span_corruption.random_spans_helper(512) == (568, 114)  # T5 / seqio's numbers
  for length in (64, 128, 256, 512, 1024):
    assert span_corruption.random_spans_helper(length) == _brute_force_lengths(length)
  assert span_corruption.random_spans_helper(128) == (141, 29)


def test_noise_mask_counts_and_spans():
  rng = np.random.default_rng(5)
  span_lengths = []
  for length in list(range(2, 60)) + [141, 568] * 20 + [190, 350]:
    mask = span_corruption.random_spans_noise_mask(length, rng)
    num_noise = min(max(int(np.round(np.float32(length) * np.float32(0.15))), 1), length - 1)
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert mask.sum() == num_noise
    assert len(starts) == max(1, int(np.round(np.float32(num_noise) / np.float32(3))))
    assert not mask[0] and mask[-1]  # non-noise first, noise last, as T5 interleaves them
    if length >= 141:
      span_lengths.append(num_noise / len(starts))
  assert abs(np.mean(span_lengths) - 3) < 0.1
  # 190 * 0.15 is 28.5 in float64 but 28.500002 in T5's float32: T5 masks 29 tokens.
  assert span_corruption.random_spans_noise_mask(190, rng).sum() == 29


def _rebuild(inputs, targets, sentinel_ids):
  """Interleave: each sentinel in the inputs is replaced by its span from the targets."""
  spans, current = {}, None
  for t in targets[:-1]:
    if t in sentinel_ids:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs[:-1]:
    out += spans[t] if t in sentinel_ids else [t]
  return out


def test_span_corruption_full_piece_lengths_order_and_rebuild():
  builder = span_corruption.SpanCorruptionBuilder(TOK, input_length=512)
  assert (builder.tokens_length, builder.targets_length) == (568, 114)
  tokens = np.arange(10, 10 + 568 * 2 + 77, dtype=np.int32)
  pieces = builder(tokens, np.random.default_rng(6))
  assert len(pieces) == 3
  for i, piece in enumerate(pieces):
    inputs, targets = piece["inputs"].tolist(), piece["targets"].tolist()
    if i < 2:
      assert len(inputs) == 512 and len(targets) == 114
    assert inputs[-1] == TOK.eos_id and targets[-1] == TOK.eos_id
    in_sentinels = [t for t in inputs if t in TOK.sentinel_ids]
    out_sentinels = [t for t in targets if t in TOK.sentinel_ids]
    assert in_sentinels == TOK.sentinel_ids[:len(in_sentinels)]  # <extra_id_0>, 1, 2, ...
    assert out_sentinels == TOK.sentinel_ids[:len(out_sentinels)]
    assert targets[0] == TOK.sentinel_ids[0]
    piece_tokens = tokens[568 * i:568 * (i + 1)].tolist()
    assert _rebuild(inputs, targets, set(TOK.sentinel_ids)) == piece_tokens
  again = builder(tokens, np.random.default_rng(6))
  assert all((p["inputs"] == q["inputs"]).all() for p, q in zip(pieces, again))


def test_span_corruption_decoder_inputs_shift_within_segments():
  packed = {"inputs": np.array([5, 6, 3, 7, 3, 0]),
            "inputs_segment_ids": np.array([1, 1, 1, 2, 2, 0]),
            "inputs_positions": np.array([0, 1, 2, 0, 1, 0]),
            "targets": np.array([99, 8, 3, 99, 3, 0]),
            "targets_segment_ids": np.array([1, 1, 1, 2, 2, 0]),
            "targets_positions": np.array([0, 1, 2, 0, 1, 0])}
  out = span_corruption.finalize_packed(packed)
  np.testing.assert_array_equal(out["decoder_input_ids"], [0, 99, 8, 0, 99, 0])
  np.testing.assert_array_equal(out["loss_mask"], [1, 1, 1, 1, 1, 0])


def test_span_corruption_too_few_sentinels_is_a_clear_error():
  tok = PieceTokenizer()
  tok.sentinel_ids = [1999, 1998]
  with pytest.raises(ValueError, match="sentinel"):
    span_corruption.SpanCorruptionBuilder(tok, input_length=512)


def test_cross_entropy_sums_match_optax_and_argmax():
  """The shared-maximum cross-entropy equals optax's (gradient too), the accuracy argmax's."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 11)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
  targets = targets.at[0, :3].set(jnp.argmax(logits[0, :3], -1))  # some correct predictions
  weights = jnp.asarray(rng.random((3, 5)) < 0.7, jnp.float32)

  def reference(x):
    ce = optax.softmax_cross_entropy_with_integer_labels(x, targets)
    log_z = jax.nn.logsumexp(x, axis=-1)
    return {"ce": jnp.sum(ce * weights),
            "correct": jnp.sum((jnp.argmax(x, -1) == targets) * weights),
            "z": 1e-2 * jnp.sum(log_z ** 2 * weights)}

  ours, want = cross_entropy_sums(logits, targets, weights, z_loss=1e-2), reference(logits)
  for term in ("ce", "correct", "z"):
    np.testing.assert_allclose(ours[term], want[term], rtol=1e-6, err_msg=term)
  assert want["correct"] >= 1
  grad = jax.grad(lambda x: sum(cross_entropy_sums(x, targets, weights, 1e-2)[t]
                                for t in ("ce", "z")))(logits)
  want_grad = jax.grad(lambda x: reference(x)["ce"] + reference(x)["z"])(logits)
  np.testing.assert_allclose(grad, want_grad, atol=1e-6)
