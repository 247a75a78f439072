"""Word units of scripts written with and without spaces: splitting lines and joining units.

Chinese, Japanese, Thai, Lao, Khmer and Burmese are written without spaces between words, so
their natural tagging unit is the character (as in character-level Chinese NER): a unit is
one such character with its combining marks. Full-width forms and CJK punctuation
("１９９８", "，") belong to that writing too. Text in other scripts splits at whitespace.

Joining units back into running text puts a space between two units only where both sides
are spaced-script text, so a tokenizer sees "北京市" and "the jury said" as they appear in
its training text, never an invented space between Chinese characters.
"""

from __future__ import annotations

import unicodedata

from absl import logging

# (first, last) code points of the scripts and forms written without spaces between words.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x2E80, 0x2FDF),    # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),    # CJK symbols and punctuation (、。「」)
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x31C0, 0x31FF),    # CJK strokes, Katakana extension
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0xFE30, 0xFE4F),    # CJK compatibility forms
    (0xFF00, 0xFFEF),    # full-width and half-width forms (１９９８，ＡＢＣ, ｶﾀｶﾅ)
    (0x20000, 0x323AF),  # CJK extensions B-H
)
MODES = ("auto", "chars", "whitespace")
_logged: set[str] = set()


def is_unspaced(ch: str) -> bool:
  """Whether ``ch`` belongs to a script or form written without spaces between words."""
  cp = ord(ch)
  return any(lo <= cp <= hi for lo, hi in _UNSPACED_RANGES)


def has_unspaced(text: str) -> bool:
  """Whether ``text`` holds any character of a script written without spaces."""
  return any(is_unspaced(ch) for ch in text)


def characters(text: str) -> list[str]:
  """``text`` as characters, each with the combining marks after it (Thai vowels, tones)."""
  out: list[str] = []
  for ch in text:
    if out and unicodedata.category(ch) in ("Mn", "Mc", "Me") and not out[-1].isspace():
      out[-1] += ch
    elif not ch.isspace():
      out.append(ch)
  return out


def split_units(text: str, mode: str = "auto") -> list[str]:
  """A line's word units: 'whitespace' words, 'chars', or 'auto' (characters of unspaced
  scripts and the punctuation among them, whitespace words elsewhere: '我用 iPhone 拍照——好！'
  -> 我 用 iPhone 拍 照 — — 好 ！).

  The first line that 'auto' splits into characters is logged once, so a run says which
  units it used.
  """
  if mode not in MODES:
    raise ValueError(f"tagging units {mode!r}: use one of {', '.join(MODES)}")
  if mode == "whitespace":
    return text.split()
  if mode == "chars":
    return characters(text)
  units: list[str] = []
  for word in text.split():
    run = ""
    # Beside Chinese, punctuation and symbols shared with Western text ("——", "“", "○") are
    # units too.
    alone = (lambda ch: is_unspaced(ch) or unicodedata.category(ch)[0] in "PS"
             ) if has_unspaced(word) else is_unspaced
    for unit in characters(word):
      if alone(unit[0]):
        units += [run, unit] if run else [unit]
        run = ""
      else:
        run += unit
    if run:
      units.append(run)
  if "auto" not in _logged and len(units) > len(text.split()):
    _logged.add("auto")
    logging.info("tagging input %r has text without spaces between words (Chinese, Japanese, "
                 "Thai...): each of its characters is one unit; other text splits at spaces",
                 text[:30])
  return units


def needs_space(left: str, right: str) -> bool:
  """Whether running text puts a space between units ``left`` and ``right``."""
  return bool(left and right) and not (is_unspaced(left[-1]) or is_unspaced(right[0]))


def join_units(units: list[str]) -> str:
  """Units back into running text: spaces only between two spaced-script units."""
  out = []
  for i, unit in enumerate(units):
    if i and needs_space(units[i - 1], unit):
      out.append(" ")
    out.append(unit)
  return "".join(out)
