"""Fine-tuning examples: a record (``data/sources.py`` shapes) -> fixed-length numpy rows.

  classification  [CLS] text [SEP] (text_b [SEP])      encoder; the pooled [CLS] is classified
                  text (EOS text_b) EOS                 decoder; the last token is classified
  tagging         [CLS] word pieces [SEP]               the tag sits on each word's first piece;
                                                        long sentences become several rows
  seq2seq         input EOS -> target EOS               T5; the decoder starts from pad (id 0)
  prompt/response BOS prompt response EOS               decoder; loss on the response only

Every row carries ``index`` (the record it came from) so predictions map back to records;
padding rows that Grain adds to the last eval batch are all zeros and weigh nothing.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lm_research.data import units

# What a single classification text longer than a row keeps (ClassificationExamples).
TRUNCATIONS = ("head", "head_tail", "windows")


def _pad(ids: Sequence[int], length: int, value: int = 0) -> np.ndarray:
  out = np.full((length,), value, np.int32)
  out[:len(ids)] = ids
  return out


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Drops tokens from the end of the longer of ``a``/``b`` (``b`` on a tie, as Hugging Face's
  'longest_first' does) until both fit ``budget``."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    if len(a) > len(b):
      a.pop()
    else:
      b.pop()
  return a, b


class ClassificationExamples:
  """Single texts or text pairs -> ``input_ids``, ``attention_mask``, ``token_type_ids``,
  ``label``, ``weight`` (0 for unlabelled records, e.g. at predict time), ``index``.

  ``truncation`` says what a single text longer than a row keeps: its 'head', its first
  quarter and last three quarters ('head_tail', Sun et al. 2019), or all of it as several
  evenly spaced, overlapping rows ('windows') whose predictions evaluation and predict
  average (``document_probs``). Pairs always drop tokens from the longer text's end.
  """

  def __init__(self, tokenizer, family: str, seq_len: int, label_ids: Mapping[str, int],
               truncation: str = "head"):
    if family not in ("encoder", "decoder"):
      raise ValueError(f"sequence classification needs an encoder or decoder model, not "
                       f"{family!r}; for T5 phrase the task as seq2seq (label text as target).")
    if truncation not in TRUNCATIONS:
      raise ValueError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    self.tok, self.family, self.seq_len, self.label_ids = tokenizer, family, seq_len, label_ids
    self.truncation = truncation

  def _single(self, ids: list[int], budget: int) -> list[list[int]]:
    """The pieces of a single text that become rows, each at most ``budget`` tokens."""
    if len(ids) <= budget:
      return [ids]
    if self.truncation == "head":
      return [ids[:budget]]
    if self.truncation == "head_tail":
      head = budget // 4
      return [ids[:head] + ids[len(ids) - (budget - head):]]
    count = -(-len(ids) // budget)  # the fewest windows that cover the text
    starts = np.linspace(0, len(ids) - budget, count).round().astype(int)
    return [ids[s:s + budget] for s in starts]

  def _row(self, ids: list[int], types: list[int], label, index: int) -> dict[str, np.ndarray]:
    return {"input_ids": _pad(ids, self.seq_len, self.tok.pad_id),
            "attention_mask": _pad([1] * len(ids), self.seq_len),
            "token_type_ids": _pad(types, self.seq_len),
            "label": np.int32(self.label_ids[label] if label else 0),
            "weight": np.float32(1.0 if label else 0.0),
            "index": np.int32(index)}

  def __call__(self, record: Mapping, index: int) -> list[dict[str, np.ndarray]]:
    tok, label = self.tok, record.get("label")
    a, b = tok.encode(record["text"]), tok.encode(record.get("text_b") or "")
    if not record.get("text_b"):
      if self.family == "encoder":
        return [self._row([tok.cls_id] + w + [tok.sep_id], [0] * (len(w) + 2), label, index)
                for w in self._single(a, self.seq_len - 2)]
      # the decoder reads the whole text, then classifies at its final EOS
      return [self._row(w + [tok.eos_id], [0] * (len(w) + 1), label, index)
              for w in self._single(a, self.seq_len - 1)]
    if self.family == "encoder":
      a, b = truncate_pair(a, b, self.seq_len - 3)
      ids = [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
      return [self._row(ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), label, index)]
    a, b = truncate_pair(a, b, self.seq_len - 2)
    ids = a + [tok.eos_id] + b + [tok.eos_id]
    return [self._row(ids, [0] * len(ids), label, index)]


def document_probs(probs: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(record indices, class probabilities [N, C]): each record's rows' probabilities averaged,
  so a text cut into several windows gets one prediction."""
  records, rows_of = np.unique(index, return_inverse=True)
  sums = np.zeros((len(records), probs.shape[-1]), np.float64)
  np.add.at(sums, rows_of, probs)
  return records, (sums / np.bincount(rows_of)[:, None]).astype(probs.dtype)


def word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
  """Each word's token ids as in running text (a word the tokenizer drops becomes [UNK]).

  A word is encoded with the space running text puts before it (``units.needs_space``):
  SentencePiece models trained here (no dummy prefix) and GPT-2's byte BPE mark a word start
  with the space, so a bare 'county' would get other pieces than the '▁county' pretraining
  saw. Characters of Chinese, Japanese or Thai get no invented space: in a tokenizer trained
  on such text a space is a piece of its own (or bytes), and the unit's tag would sit on it.
  """
  encoded = tokenizer.encode_batch([" " + w if i and units.needs_space(words[i - 1], w) else w
                                    for i, w in enumerate(words)])
  unk = tokenizer.unk_id if tokenizer.unk_id is not None else tokenizer.pad_id
  return [ids if ids else [unk] for ids in encoded]


class TaggingExamples:
  """Sentences -> rows with ``tags`` on each word's first piece (``tag_weights`` 1 there).

  A sentence longer than a row continues in the next row (``word_offset`` says where), so
  every word gets a prediction; a single word too long for a row keeps its first pieces.
  """

  def __init__(self, tokenizer, family: str, seq_len: int, tag_ids: Mapping[str, int]):
    if family not in ("encoder", "decoder"):
      raise ValueError(f"token classification needs an encoder or decoder model, not {family!r}")
    self.tok, self.family, self.seq_len, self.tag_ids = tokenizer, family, seq_len, tag_ids
    self.specials = 2 if family == "encoder" else 0  # [CLS] ... [SEP]

  def chunks(self, pieces: list[list[int]]) -> list[tuple[int, int]]:
    """(first word, end word) of each row: as many whole words as fit."""
    budget = self.seq_len - self.specials
    spans, start, used = [], 0, 0
    for i, p in enumerate(pieces):
      if used and used + len(p) > budget:
        spans.append((start, i))
        start, used = i, 0
      used += min(len(p), budget)
    spans.append((start, len(pieces)))
    return spans

  def __call__(self, record: Mapping, index: int) -> list[dict[str, np.ndarray]]:
    words, tags = record["tokens"], record.get("tags") or []
    pieces = word_pieces(self.tok, words) if words else []
    budget = self.seq_len - self.specials
    rows = []
    for start, end in self.chunks(pieces) if pieces else []:
      ids, labels, firsts = [], [], []
      for w in range(start, end):
        p = pieces[w][:budget]
        firsts.append(len(ids) + (1 if self.family == "encoder" else 0))
        # A tag training never showed (data.unseen_eval_labels='count_wrong') gets the id
        # past the last one: never predicted, so scored as an error, and left out of the loss.
        labels.append(self.tag_ids.get(tags[w], len(self.tag_ids)) if tags else 0)
        ids += p
      if self.family == "encoder":
        ids = [self.tok.cls_id] + ids + [self.tok.sep_id]
      tag_row = np.zeros((self.seq_len,), np.int32)
      weight_row = np.zeros((self.seq_len,), np.float32)
      tag_row[firsts] = labels
      weight_row[firsts] = 1.0
      rows.append({"input_ids": _pad(ids, self.seq_len, self.tok.pad_id),
                   "attention_mask": _pad([1] * len(ids), self.seq_len),
                   "token_type_ids": np.zeros((self.seq_len,), np.int32),
                   "tags": tag_row, "tag_weights": weight_row,
                   "labelled": np.float32(1.0 if tags else 0.0),
                   "index": np.int32(index), "word_offset": np.int32(start)})
    return rows


def word_predictions(tag_weights: np.ndarray, predicted: np.ndarray) -> list[int]:
  """One row's predicted tag ids at word starts (the inverse of TaggingExamples' placement)."""
  return [int(t) for t in predicted[tag_weights > 0]]


class Seq2SeqExamples:
  """(input, target) -> T5 rows in the span-corruption batch format (one pair per row)."""

  def __init__(self, tokenizer, seq_len: int, target_len: int):
    self.tok, self.seq_len, self.target_len = tokenizer, seq_len, target_len

  def __call__(self, record: Mapping, index: int) -> list[dict[str, np.ndarray]]:
    eos = self.tok.eos_id
    inputs = self.tok.encode(record["input"])[:self.seq_len - 1] + [eos]
    target_text = record.get("target")
    targets = (self.tok.encode(target_text)[:self.target_len - 1] + [eos]) if target_text else []
    decoder_inputs = ([0] + targets[:-1]) if targets else [0]
    n, m = len(inputs), len(decoder_inputs)
    return [{"input_ids": _pad(inputs, self.seq_len, self.tok.pad_id),
             "segment_ids": _pad([1] * n, self.seq_len),
             "positions": _pad(range(n), self.seq_len),
             "decoder_input_ids": _pad(decoder_inputs, self.target_len),
             "targets": _pad(targets, self.target_len),
             "decoder_segment_ids": _pad([1] * m, self.target_len),
             "decoder_positions": _pad(range(m), self.target_len),
             "loss_mask": _pad([1] * len(targets), self.target_len).astype(np.float32),
             "index": np.int32(index)}]


class PromptResponseExamples:
  """(prompt, response) -> causal-LM rows whose loss mask covers the response and its EOS."""

  def __init__(self, tokenizer, seq_len: int):
    self.tok, self.seq_len = tokenizer, seq_len
    bos = tokenizer.bos_id
    self.bos = tokenizer.eos_id if bos is None else bos  # GPT-2 starts documents with EOS

  def __call__(self, record: Mapping, index: int) -> list[dict[str, np.ndarray]]:
    prompt = [self.bos] + self.tok.encode(record["input"])
    response = self.tok.encode(record.get("target") or "") + [self.tok.eos_id]
    ids = (prompt + response)[:self.seq_len + 1]
    inputs, targets = ids[:-1], ids[1:]
    scored = [0] * (len(prompt) - 1) + [1] * len(response)  # targets that are response tokens
    n = len(inputs)
    return [{"input_ids": _pad(inputs, self.seq_len, self.tok.pad_id),
             "targets": _pad(targets, self.seq_len),
             "segment_ids": _pad([1] * n, self.seq_len),
             "positions": _pad(range(n), self.seq_len),
             "loss_mask": _pad(scored[:n], self.seq_len).astype(np.float32),
             "index": np.int32(index)}]
