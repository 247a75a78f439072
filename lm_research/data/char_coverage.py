"""How many characters a SentencePiece vocabulary keeps as pieces of their own.

English needs about a hundred characters, a Chinese newspaper about four thousand: at the
usual coverage (0.9995) those do not fit a 4,096-piece vocabulary beside the 256 byte
pieces, and SentencePiece stops ("Vocabulary size is smaller than required_chars"). ``fit``
lowers the coverage just enough and says so in one line; byte fallback spells the rarer
characters. It also names the characters every model keeps: the space '▁' (so spaces
round-trip in a model trained on text without them) and, when there is room, printable ASCII
(Latin text in Chinese reviews would otherwise become byte pieces).
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

_SPACE = "\u2581"  # SentencePiece's space; without this piece a space decodes as '▁' itself
_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII, kept when there is room
# Single characters may take at most this share of the pieces left beside specials and bytes,
# so that multi-character pieces keep the rest.
CHAR_SHARE = 0.75
MIN_COVERAGE = 0.98  # SentencePiece's own lower bound on character_coverage


def fit(sentences: Sequence[str], vocab_size: int, coverage: float, fixed: int,
        family: str) -> tuple[float, str, str]:
  """(coverage, required characters, one-line account) that fit ``vocab_size``.

  SentencePiece keeps the most frequent characters until they cover ``coverage`` of the text,
  and fails when they and the fixed pieces outnumber the vocabulary (4,096 pieces cannot hold
  the ~4,000 characters of a Chinese newspaper at 0.9995). Here single characters get at most
  ``CHAR_SHARE`` of the free pieces: the coverage is lowered to the most frequent characters
  that fit, exactly as SentencePiece counts them (spaces as '▁'), and the rest become bytes.
  The coverage returned accounts for the required characters, which SentencePiece counts
  before all others.
  """
  if not MIN_COVERAGE <= coverage <= 1:
    raise ValueError(f"character_coverage={coverage} must be in [{MIN_COVERAGE}, 1] "
                     "(SentencePiece's range): set data.character_coverage (or "
                     "--character_coverage)")
  free = vocab_size - fixed
  if free < 16:
    raise ValueError(f"a {vocab_size}-piece vocabulary leaves no room for text beside the "
                     f"{fixed} special and byte pieces of the {family} family; raise "
                     f"model.vocab_size (or --vocab_size) to at least {fixed + 256}")
  required = _SPACE + (_ASCII if 4 * len(_ASCII) <= free else "")
  counts = collections.Counter(ch for text in sentences for ch in text.replace(" ", _SPACE))
  total = max(sum(counts.values()), 1)
  ordered = counts.most_common()
  # SentencePiece's loop: characters in frequency order while the covered share is below the
  # coverage; what the configured coverage keeps, and how many of those are not required.
  covered = np.cumsum([0] + [k for _, k in ordered]) / total
  wanted = int(np.argmax(covered >= coverage)) if covered[-1] >= coverage else len(ordered)
  others = [k for ch, k in ordered if ch not in required]
  keep_wanted = wanted - sum(ch in required for ch, _ in ordered[:wanted])
  limit = int(CHAR_SHARE * free)
  keep = max(min(keep_wanted, limit - len(required)), 0)
  # SentencePiece refuses a coverage below 0.98: the characters of 98% of the text get the
  # whole free vocabulary if they need it, and a vocabulary too small even for that is an error.
  at_least = int(np.searchsorted(np.cumsum(others), MIN_COVERAGE * total
                                 - sum(counts[ch] for ch in required))) + 1
  if keep < at_least:
    if len(required) + at_least > free:
      raise ValueError(
          f"a {vocab_size}-piece vocabulary cannot hold the {len(required) + at_least} "
          f"characters that cover {MIN_COVERAGE:.0%} of this text (the least SentencePiece "
          f"allows) beside its {fixed} special and byte pieces; raise model.vocab_size (or "
          f"--vocab_size) to at least {fixed + len(required) + at_least}")
    keep = at_least
  # Given required characters, SentencePiece counts them first, then the others by frequency:
  # this share (float32, as it computes it) stops it after exactly `keep` others (or fewer).
  share = (sum(counts[ch] for ch in required) + sum(others[:keep])) / total
  fitted = max(float(np.float32(share)), 1e-6)
  kept_share = 100 * share
  if keep == keep_wanted:
    return fitted, required, (
        f"character_coverage={coverage:g} keeps {wanted} of {len(ordered)} characters "
        f"({kept_share:.2f}% of the text; the rest fall back to byte pieces)")
  return fitted, required, (
      f"character_coverage={coverage:g} would keep {wanted} characters, more than the {limit} "
      f"that fit {CHAR_SHARE:.0%} of a {vocab_size}-piece vocabulary beside its {fixed} "
      f"special and byte pieces; keeping the {keep} most frequent of {len(ordered)} characters "
      f"({kept_share:.2f}% of the text, coverage {fitted:.6g}"
      f"{', the least SentencePiece allows' if keep == at_least else ''}), the rest as byte "
      "pieces (a larger model.vocab_size keeps more)")
