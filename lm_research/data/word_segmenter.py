"""Word starts of token ids from a word segmenter: whole-word masking for Chinese (BERT-wwm).

Chinese is written without spaces, so a tokenizer's pieces say nothing about words: '北京'
and '市' may be one word or two. BERT-wwm (Cui et al. 2019) masks every character of a word
together, with words from a segmenter. Here that segmenter is ``jieba`` when it is installed
(``pip install jieba``; optional, pure Python, MIT licence); without it, words are the
tokenizer's own (each Chinese character, and each '▁'-started piece run), as one log line says.
"""

from __future__ import annotations

import logging as py_logging
import re
from typing import Callable, Sequence

from absl import logging
import numpy as np

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_segmenter: list = []  # [the segmenter or None], filled on first use


def load_segmenter() -> Callable[[str], list[str]] | None:
  """``jieba.lcut`` when jieba is installed, else None (logged once)."""
  if not _segmenter:
    try:
      import jieba  # noqa: PLC0415  (optional: only whole-word masking by words needs it)
      jieba.setLogLevel(py_logging.WARNING)  # not its dictionary-loading chatter
      jieba.initialize()
      _segmenter.append(jieba.lcut)
      logging.info("whole-word masking: words from the jieba segmenter")
    except ImportError:
      _segmenter.append(None)
      logging.info("whole-word masking: jieba is not installed, so words are the tokenizer's "
                   "own (each Chinese character is a word); `pip install jieba` for words")
  return _segmenter[0]


def char_lengths(tokenizer) -> np.ndarray:
  """Characters each id adds to decoded text: a byte piece adds one when it starts a
  character (not a UTF-8 continuation byte), a special nothing."""
  lengths = np.zeros(tokenizer.vocab_size, np.int32)
  specials = {getattr(tokenizer, f"{r}_id", None) for r in
              ("pad", "unk", "eos", "bos", "cls", "sep", "mask")}
  for i in range(tokenizer.vocab_size):
    if i in specials:
      continue
    piece = tokenizer.id_to_piece(i)
    byte = _BYTE.match(piece)
    lengths[i] = (int(byte.group(1), 16) & 0xC0 != 0x80) if byte else len(piece)
  return lengths


def word_starts(ids: Sequence[int], tokenizer, segment: Callable[[str], list[str]],
                lengths: np.ndarray, fallback: np.ndarray) -> np.ndarray:
  """Whether each token of one line starts a segmenter word (a piece starting inside a word
  does not). A line whose decoded text does not line up with its pieces (broken bytes)
  keeps the tokenizer's word starts ``fallback[ids]``."""
  ids = np.asarray(ids, np.int64)
  text = tokenizer.decode(ids)
  offsets = np.concatenate([[0], np.cumsum(lengths[ids])[:-1]]) if len(ids) else ids
  if len(ids) == 0 or int(lengths[ids].sum()) != len(text):
    return fallback[ids]
  boundaries = np.zeros(len(text) + 1, bool)
  boundaries[np.cumsum([0] + [len(w) for w in segment(text)])[:-1]] = True
  return boundaries[offsets] & (lengths[ids] > 0)
