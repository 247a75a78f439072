"""Masked LM + next-sentence prediction (BERT): pretraining examples built from documents.

Example construction follows google-research/bert ``create_pretraining_data.py``, run online
instead of as a preprocessing job, so masks and sentence pairs are drawn anew each epoch:

* a document is a list of lines (token id lists); consecutive lines fill a chunk up to a target
  length (``max_seq_len - 3``, or with probability ``short_seq_prob`` a random shorter one);
* the chunk splits at a random line boundary into segments A and B; with probability 0.5 (always
  when the chunk has one line) B instead comes from a random other document ("not next", label 1)
  and the chunk's unused lines are put back for the next chunk; "is next" is label 0, as in
  Hugging Face's ``next_sentence_label``;
* the pair is truncated one token at a time from the front or back of the longer segment;
* 15% of the non-special tokens (capped at ``max_predictions_per_seq``) are selected: 80% become
  ``[MASK]``, 10% a random non-special token, 10% stay; optionally whole words are selected:
  ``whole_word_mask='pieces'`` (or True) takes words from the tokenizer's word starts ('▁'
  pieces; each Chinese character), ``'words'`` from a segmenter (BERT-wwm for Chinese: jieba
  when installed, else the tokenizer's words; ``data/word_segmenter.py``).

A corpus of one document has no other document to draw "not next" segments from: NSP then
pairs the document with itself and cannot learn, and the builder warns once. With many
documents NSP can learn from what a pair shares (words, names, topic), but the tiny recipes do
not get it started: at their 2e-3 rate the [CLS] path collapses onto the majority label, and
600 steps at 5e-4 are too few. The loss and its gradients equal Hugging Face's
BertForPreTraining (tests/test_objectives.py; docs/experiments.md, "Next-sentence prediction").

Two deliberate differences from the reference script: the 15% counts non-special tokens (the
script counts [CLS]/[SEP] too, one token more at most), and random replacements never draw a
special id (the script may insert [CLS] or [PAD]).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from absl import logging

from lm_research.data import word_segmenter
from lm_research.objectives.losses import cross_entropy_sums

TokenLines = Sequence[Sequence[int]]
WHOLE_WORD_MASKS = ("", "pieces", "words")  # off; the tokenizer's words; a segmenter's words


def default_max_predictions(seq_len: int, masked_lm_prob: float = 0.15) -> int:
  """BERT's cap on masked tokens per example: 20 for 128 (ceil of 15% of the length)."""
  return int(math.ceil(seq_len * masked_lm_prob))


def predictions_per_row(data_config, seq_len: int) -> int:
  """Masked positions per row: ``data.max_predictions_per_seq``, else BERT's default."""
  if data_config.get("max_predictions_per_seq") is not None:
    return int(data_config.max_predictions_per_seq)
  return default_max_predictions(seq_len, data_config.get("masked_lm_prob", 0.15))


def special_token_ids(tokenizer) -> list[int]:
  """Every special id the tokenizer defines (pad, unk, bos, eos, cls, sep, mask, sentinels)."""
  ids = [getattr(tokenizer, name, None)
         for name in ("pad_id", "unk_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id")]
  ids += list(getattr(tokenizer, "sentinel_ids", None) or [])
  return sorted({int(i) for i in ids if i is not None and i >= 0})


def truncate_seq_pair(tokens_a: Sequence[int], tokens_b: Sequence[int], max_num_tokens: int,
                      rng: np.random.Generator) -> tuple[Sequence[int], Sequence[int]]:
  """BERT's truncation: drop tokens from a random end of the longer segment until both fit."""
  a0, a1, b0, b1 = 0, len(tokens_a), 0, len(tokens_b)
  excess = a1 + b1 - max_num_tokens
  if excess <= 0:
    return tokens_a, tokens_b
  # One coin per removed token, as the reference's `rng.random() < 0.5` per loop iteration;
  # indices instead of `del tokens[0]` keep a very long line linear rather than quadratic.
  for front in rng.random(excess) < 0.5:
    if a1 - a0 > b1 - b0:
      a0, a1 = (a0 + 1, a1) if front else (a0, a1 - 1)
    else:
      b0, b1 = (b0 + 1, b1) if front else (b0, b1 - 1)
  return tokens_a[a0:a1], tokens_b[b0:b1]


def create_segment_pairs(
    document: TokenLines, doc_index: int, num_docs: int,
    other_document: Callable[[int], TokenLines], *, max_num_tokens: int,
    short_seq_prob: float, rng: np.random.Generator,
) -> list[tuple[list[int], list[int], int]]:
  """``create_instances_from_document`` without masking: [(tokens_a, tokens_b, nsp_label)].

  ``document`` holds the non-empty lines of document ``doc_index`` (of ``num_docs``);
  ``other_document(j)`` returns document j's lines (it may tokenize them lazily on indexing).
  """
  target_seq_length = max_num_tokens
  if rng.random() < short_seq_prob:
    target_seq_length = int(rng.integers(2, max_num_tokens + 1))
  pairs = []
  chunk: list[Sequence[int]] = []
  current_length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    current_length += len(document[i])
    if i == len(document) - 1 or current_length >= target_seq_length:
      a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
      tokens_a = [t for line in chunk[:a_end] for t in line]
      tokens_b: list[int] = []
      if len(chunk) == 1 or rng.random() < 0.5:
        label = 1
        target_b_length = target_seq_length - len(tokens_a)
        # Ten tries to avoid the document itself, as the reference; a one-document corpus
        # falls back to pairing the document with itself.
        for _ in range(10):
          random_index = int(rng.integers(0, num_docs))
          if random_index != doc_index:
            break
        random_document = other_document(random_index)
        if len(random_document):
          for j in range(int(rng.integers(0, len(random_document))), len(random_document)):
            tokens_b.extend(random_document[j])
            if len(tokens_b) >= target_b_length:
              break
        i -= len(chunk) - a_end  # put the unused lines back
      else:
        label = 0
        tokens_b = [t for line in chunk[a_end:] for t in line]
      tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
      if tokens_a and tokens_b:  # only an empty random document leaves B empty
        pairs.append((list(tokens_a), list(tokens_b), label))
      chunk, current_length = [], 0
    i += 1
  return pairs


def word_groups(candidates: np.ndarray, word_start: np.ndarray | None) -> list[np.ndarray]:
  """Candidate positions grouped into maskable units: single tokens, or whole words.

  ``word_start[k]`` says whether the token at position ``candidates[k]`` starts a word; a new
  word also starts after any gap (a special token), so a word never spans [SEP].
  """
  if word_start is None or len(candidates) == 0:
    return [candidates[k:k + 1] for k in range(len(candidates))]
  starts = word_start.copy()
  starts[0] = True
  starts[1:] |= np.diff(candidates) != 1
  return np.split(candidates, np.flatnonzero(starts)[1:])


def mask_tokens(
    input_ids: np.ndarray, candidates: np.ndarray, rng: np.random.Generator, *,
    masked_lm_prob: float, max_predictions: int, mask_id: int, random_ids: np.ndarray,
    word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """BERT's ``create_masked_lm_predictions`` on id arrays: (masked input ids, sorted positions).

  ``candidates`` are the positions that may be masked (the non-special tokens).
  """
  num_to_predict = min(max_predictions, max(1, int(round(len(candidates) * masked_lm_prob))))
  if word_start is None:  # single tokens: the first num_to_predict of a random order
    positions = np.sort(candidates[rng.permutation(len(candidates))[:num_to_predict]])
  else:
    groups = word_groups(candidates, word_start)
    chosen: list[np.ndarray] = []
    count = 0
    for g in rng.permutation(len(groups)):
      if count >= num_to_predict:
        break
      # A whole word that would overshoot the budget is skipped, as in the reference.
      if count + len(groups[g]) > num_to_predict:
        continue
      chosen.append(groups[g])
      count += len(groups[g])
    positions = np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)
  masked = input_ids.copy()
  u = rng.random(len(positions))
  replace = random_ids[rng.integers(0, len(random_ids), size=len(positions))]
  masked[positions] = np.where(u < 0.8, mask_id, np.where(u < 0.9, replace, input_ids[positions]))
  return masked, positions


class _FlaggedLines(Sequence):
  """A document's lines with each token's word-start flag in its lowest bit (id * 2 + flag),
  so that pairing and truncation carry the flags along unchanged; computed on access."""

  def __init__(self, lines: TokenLines, flags):
    self._lines, self._flags, self._done = lines, flags, {}

  def __len__(self) -> int:
    return len(self._lines)

  def __getitem__(self, j: int) -> list[int]:
    if j not in self._done:
      ids = np.asarray(self._lines[j], np.int64)
      self._done[j] = (ids * 2 + self._flags(ids)).tolist()
    return self._done[j]


class MlmNspBuilder:
  """Turns one document into fixed-length MLM + NSP examples (dicts of numpy arrays)."""

  def __init__(self, tokenizer, *, max_seq_len: int, short_seq_prob: float = 0.1,
               masked_lm_prob: float = 0.15, max_predictions_per_seq: int | None = None,
               whole_word_mask: bool | str = False):
    if max_seq_len < 5:
      raise ValueError(f"mlm_nsp needs seq_len >= 5 ([CLS] A [SEP] B [SEP]); got {max_seq_len}.")
    mode = {False: "", True: "pieces"}.get(whole_word_mask, whole_word_mask)
    if mode not in WHOLE_WORD_MASKS:
      raise ValueError(f"data.whole_word_mask={whole_word_mask!r}: use '' (off), 'pieces' (the "
                       "tokenizer's words) or 'words' (a segmenter's: jieba for Chinese)")
    self.max_seq_len = max_seq_len
    self.short_seq_prob = short_seq_prob
    self.masked_lm_prob = masked_lm_prob
    self.max_predictions = (max_predictions_per_seq if max_predictions_per_seq is not None
                            else default_max_predictions(max_seq_len, masked_lm_prob))
    self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id
    self.pad_id, self.mask_id = tokenizer.pad_id, tokenizer.mask_id
    specials = special_token_ids(tokenizer)
    self.random_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), specials).astype(np.int32)
    # A lookup table once, so whole-word grouping is one indexing op per example.
    self.word_start_table = None
    if mode:
      table = getattr(tokenizer, "word_starts", None)
      self.word_start_table = np.asarray(
          table if table is not None
          else [tokenizer.is_word_start(i) for i in range(tokenizer.vocab_size)], bool)
    # By a segmenter's words only when one is installed (else the tokenizer's, logged).
    self.tokenizer = tokenizer
    self.by_words = mode == "words" and word_segmenter.load_segmenter() is not None
    self.char_lengths = word_segmenter.char_lengths(tokenizer) if self.by_words else None
    self._warned_one_document = False

  def _flags(self, ids: np.ndarray) -> np.ndarray:
    """Word starts of one line's ids by the segmenter."""
    return word_segmenter.word_starts(ids, self.tokenizer, word_segmenter.load_segmenter(),
                                      self.char_lengths, self.word_start_table)

  def example(self, tokens_a: Sequence[int], tokens_b: Sequence[int], nsp_label: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``[CLS] A [SEP] B [SEP]``, masked and padded to ``max_seq_len``."""
    n_a, n_b, length = len(tokens_a), len(tokens_b), len(tokens_a) + len(tokens_b) + 3
    ids = np.full((self.max_seq_len,), self.pad_id, np.int32)
    ids[:length] = [self.cls_id, *tokens_a, self.sep_id, *tokens_b, self.sep_id]
    types = np.zeros((self.max_seq_len,), np.int32)
    types[n_a + 2:length] = 1
    candidates = np.concatenate([np.arange(1, n_a + 1), np.arange(n_a + 2, n_a + 2 + n_b)])
    if self.by_words:  # the segmenter's flags ride in the lowest bit
      word_start = ids[candidates] % 2 == 1
      ids[candidates] //= 2
    else:
      word_start = (None if self.word_start_table is None
                    else self.word_start_table[ids[candidates]])
    masked, positions = mask_tokens(
        ids, candidates, rng, masked_lm_prob=self.masked_lm_prob,
        max_predictions=self.max_predictions, mask_id=self.mask_id,
        random_ids=self.random_ids, word_start=word_start)
    targets = np.zeros((self.max_seq_len,), np.int32)
    targets[positions] = ids[positions]
    weights = np.zeros((self.max_seq_len,), np.float32)
    weights[positions] = 1.0
    attention = np.zeros((self.max_seq_len,), np.int32)
    attention[:length] = 1
    # The masked positions, padded with 0 ([CLS], never masked, weight 0) to a fixed count:
    # the loss computes vocabulary logits at these positions only.
    mlm_positions = np.zeros((self.max_predictions,), np.int32)
    mlm_positions[:len(positions)] = positions
    return {"input_ids": masked, "token_type_ids": types, "attention_mask": attention,
            "mlm_targets": targets, "mlm_weights": weights, "mlm_positions": mlm_positions,
            "nsp_labels": np.int32(nsp_label),
            # 1 for a real example; padded evaluation rows carry 0 (the loss reads it).
            "nsp_weights": np.float32(1.0)}

  def __call__(self, document: TokenLines, doc_index: int, num_docs: int,
               other_document: Callable[[int], TokenLines],
               rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """All examples of one document (empty lines already removed), masks included."""
    if not len(document):
      return []
    if num_docs < 2 and not self._warned_one_document:
      self._warned_one_document = True
      logging.warning("NSP has one document to draw 'not next' segments from, so it cannot "
                      "learn: separate documents by blank lines in .txt files (or use several "
                      "files, or .jsonl with one document per line)")
    if self.by_words:
      document = _FlaggedLines(document, self._flags)
      unflagged = other_document
      other_document = lambda j: _FlaggedLines(unflagged(j), self._flags)  # noqa: E731
    pairs = create_segment_pairs(
        document, doc_index, num_docs, other_document, max_num_tokens=self.max_seq_len - 3,
        short_seq_prob=self.short_seq_prob, rng=rng)
    return [self.example(a, b, label, rng) for a, b, label in pairs]


def loss_numerators(model, batch, dropout_rng, z_loss):
  """Cross-entropy on masked tokens plus next-sentence classification (sums).

  With ``mlm_positions`` in the batch (the pipeline's batches have it), vocabulary logits are
  computed at those positions only, as the original BERT's ``max_predictions_per_seq`` gather
  does: at seq 128 that is 20 rows of the 30k-wide projection instead of 128.
  """
  del z_loss  # an encoder's MLM softmax needs no z-loss
  positions_BP = batch.get("mlm_positions")
  out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
              token_type_ids=batch["token_type_ids"], dropout_rng=dropout_rng,
              mlm_positions=positions_BP)
  targets, weights = batch["mlm_targets"], batch["mlm_weights"]
  if positions_BP is not None:
    targets = jnp.take_along_axis(targets, positions_BP, axis=1)
    weights = jnp.take_along_axis(weights, positions_BP, axis=1)
  mlm = cross_entropy_sums(out.logits, targets, weights)
  nsp_weights = batch["nsp_weights"]
  nsp_ce = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, batch["nsp_labels"])
  nsp_correct = jnp.argmax(out.nsp_logits, -1) == batch["nsp_labels"]
  return {"mlm_loss": mlm["ce"], "mlm_accuracy": mlm["correct"],
          "nsp_loss": jnp.sum(nsp_ce * nsp_weights),
          "nsp_accuracy": jnp.sum(nsp_correct * nsp_weights)}


def loss_denominators(batch):
  """Masked tokens (MLM terms) and real examples (NSP terms)."""
  return {"masked": jnp.sum(batch["mlm_weights"].astype(jnp.float32)),
          "examples": jnp.sum(batch["nsp_weights"].astype(jnp.float32))}
