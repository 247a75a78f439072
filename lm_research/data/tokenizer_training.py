"""Training a SentencePiece tokenizer that fits any script, and the load-or-train step of a run.

Models are trained with byte fallback, no normalisation and the space piece kept, so any text
round-trips (``tokenizer.py``); the character coverage is fitted to the vocabulary
(``char_coverage.py``) and logged. No piece spans two characters of a script written without
spaces (Chinese, Japanese, Thai: ``units.py``), as BERT's Chinese vocabulary has one token per
ideograph: pretraining then reads the pieces a character-level tagger reads, never a word
piece such as 江泽民 whose characters NER encodes one by one. From the command line:
  python -m lm_research.data.tokenizer_training --input='data/shakespeare/train/*.txt' \
      --output=/tmp/shakespeare --vocab_size=8192 --family=decoder [--model_type=bpe]
"""

from __future__ import annotations

import io
import os
import random
import time
import unicodedata
from typing import Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np
import sentencepiece as spm

from lm_research import paths
from lm_research.data import char_coverage, formats, tokenizer, units

# Specials of a SentencePiece model trained here; pad is id 0 in every family.
TRAIN_SPECIALS = {
    "encoder": dict(pad_piece="[PAD]", unk_piece="[UNK]", pad_id=0, unk_id=1, eos_id=-1,
                    control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
    "decoder": dict(pad_piece="<pad>", eos_piece="<|endoftext|>", unk_piece="<unk>", pad_id=0,
                    eos_id=1, unk_id=2),
    "encoder_decoder": dict(pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", pad_id=0,
                            eos_id=1, unk_id=2,
                            user_defined_symbols=[tokenizer.SENTINEL.format(i)
                                                  for i in range(tokenizer.NUM_SENTINELS)]),
}
MAX_LINE_CHARS = 4096  # longer lines are cut: SentencePiece silently skips over-long sentences
BYTE_PIECES = 256
# Marks where a piece must end in the training text (SentencePiece's pretokenization_delimiter):
# an invisible separator, which real text hardly holds.
_BOUNDARY = "\u2063"


def _sentences(texts: Iterable[str], limit: int) -> Iterator[str]:
  """Non-blank lines of the texts (cut to MAX_LINE_CHARS), at most ``limit`` of them."""
  count = 0
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), MAX_LINE_CHARS):
        piece = line[start:start + MAX_LINE_CHARS]
        if piece.strip():
          yield piece
          count += 1
          if count >= limit:
            return


def _split_unspaced(line: str) -> str:
  """``line`` with a boundary mark on each side of every character of an unspaced script (its
  combining marks stay with it), so no trained piece joins two such characters."""
  out = []
  for i, ch in enumerate(line):
    if (i and unicodedata.category(ch)[0] != "M"
        and (units.is_unspaced(ch) or units.is_unspaced(line[i - 1]))):
      out.append(_BOUNDARY)
    out.append(ch)
  return "".join(out)


def _mark_unspaced(sentences: list[str], coverage: float, required: str) -> tuple[list, dict]:
  """The training sentences with boundary marks, and the trainer options that go with them.

  SentencePiece counts the marks as characters of the text: they are made a required
  character (counted first) and the fitted coverage is rescaled to that count, so the same
  characters are kept as without them. Text without unspaced characters is left as it is.
  """
  marked = [_split_unspaced(s) for s in sentences]
  chars = sum(map(len, sentences))
  marks = sum(map(len, marked)) - chars
  if not marks:
    return sentences, dict(character_coverage=coverage, required_chars=required)
  coverage = float(np.float32((marks + coverage * chars) / (marks + chars)))
  return marked, dict(character_coverage=min(coverage, 1.0), required_chars=required + _BOUNDARY,
                      pretokenization_delimiter=_BOUNDARY)


def _fixed_pieces(family: str) -> int:
  """Pieces a trained model holds whatever the text: specials, sentinels and the 256 bytes."""
  spec = TRAIN_SPECIALS[family]
  return (BYTE_PIECES + len(spec.get("control_symbols", ()))
          + len(spec.get("user_defined_symbols", ()))
          + sum(spec.get(f"{role}_id", -1) >= 0 for role in ("pad", "unk", "eos", "bos")))


def train_sentencepiece(texts: str | Iterable[str], model_prefix: str, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        family: str = "decoder", input_sentence_size: int = 1_000_000,
                        ) -> tokenizer.SentencePieceTokenizer:
  """Trains a byte-fallback SentencePiece model on texts (or a file/folder/glob) → PREFIX.model.

  At most 2 × input_sentence_size lines are read and input_sentence_size of them sampled, so
  training takes seconds to minutes whatever the corpus size. The character coverage is
  lowered where the characters would not fit (``char_coverage.fit``; logged). The vocabulary
  may come out smaller than ``vocab_size`` when the text is too small to fill it.
  """
  tokenizer.check_family(family)
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"model_type={model_type!r}: use 'unigram' or 'bpe'")
  if isinstance(texts, str):
    files = formats.resolve_files(texts, "text", "tokenizer input")
    texts = (r["text"] for r in formats.iter_records("text", files))
  sentences = list(_sentences(texts, 2 * input_sentence_size))
  if not sentences:
    raise ValueError("there is no text to train a tokenizer on; check the training data")
  if len(sentences) > input_sentence_size:  # sampled here, so the coverage fit counts them
    sentences = random.Random(0).sample(sentences, input_sentence_size)
  coverage, required, account = char_coverage.fit(sentences, vocab_size, character_coverage,
                                                 _fixed_pieces(family), family)
  logging.info("tokenizer: %s", account)
  sentences, char_options = _mark_unspaced(sentences, coverage, required)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, **char_options,
        # identity normalisation and kept whitespace make decode(encode(text)) == text
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        bos_id=-1, input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        # bytes: 4 per character at most, 3 per boundary mark
        max_sentence_length=8 * MAX_LINE_CHARS, hard_vocab_limit=False,
        num_threads=min(os.cpu_count() or 1, 16), minloglevel=2, **TRAIN_SPECIALS[family])
  except RuntimeError as e:
    reason = str(e).strip().splitlines()[-1]
    raise ValueError(f"SentencePiece could not train a {vocab_size}-piece {model_type} model "
                     f"({reason}); change model.vocab_size, data.character_coverage or "
                     "data.tokenizer_type (--vocab_size, --character_coverage, --model_type), "
                     "or the data") from None
  path = f"{model_prefix}.model"
  paths.write_bytes(path, model.getvalue())  # whole: never a half-written model to load
  return tokenizer.SentencePieceTokenizer(model.getvalue(), family, path)


def get_or_train_tokenizer(tokenizer_path: str, texts_fn: Callable[[], Iterable[str]],
                           family: str, vocab_size: int, model_type: str = "unigram",
                           character_coverage: float = 0.9995,
                           workdir: str = "") -> tokenizer.Tokenizer:
  """Loads the configured tokenizer, or trains one on the training texts and saves it.

  An empty path means ``WORKDIR/tokenizer.model``, so a resumed run reuses its own tokenizer.
  """
  path = tokenizer_path or (os.path.join(workdir, "tokenizer.model") if workdir else "")
  if not path:
    raise ValueError("no tokenizer: set data.tokenizer_path, or give a workdir to train one in")
  if paths.exists(path):
    tok = tokenizer.load_tokenizer(path, family)
    logging.info("loaded tokenizer %s (%d ids)", path, tok.vocab_size)
    return tok
  if not path.endswith(".model"):
    raise ValueError(f"data.tokenizer_path={tokenizer_path!r} does not exist; point it at a "
                     ".model, tokenizer.json, vocab.txt or a folder with one, or at a new .model "
                     "path to train one there")
  start = time.time()
  tok = train_sentencepiece(texts_fn(), path[:-len(".model")], vocab_size, model_type,
                            character_coverage, family)
  logging.info("trained a %s SentencePiece tokenizer (%d ids, asked for %d) for the %s family "
               "on the training texts in %.1fs; saved it to %s", model_type, tok.vocab_size,
               vocab_size, family, time.time() - start, path)
  return tok


def main(argv: Sequence[str]) -> None:
  """Trains a SentencePiece tokenizer from the command-line flags."""
  from absl import flags  # noqa: PLC0415  (only the command reads flags)
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  start = time.time()
  tok = train_sentencepiece(f.input, f.output, f.vocab_size, f.model_type, f.character_coverage,
                            f.family)
  print(f"wrote {f.output}.model: {tok.vocab_size} ids for the {f.family} family "
        f"(pad={tok.pad_id}, eos={tok.eos_id}) in {time.time() - start:.1f}s")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("input", None, "file, folder or glob of .txt/.jsonl training text",
                      required=True)
  flags.DEFINE_string("output", None, "model prefix: writes PREFIX.model", required=True)
  flags.DEFINE_integer("vocab_size", 8192, "pieces in the vocabulary (an upper bound)")
  flags.DEFINE_enum("family", "decoder", list(tokenizer.FAMILIES),
                    "model family whose specials to add")
  flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "SentencePiece algorithm")
  flags.DEFINE_float("character_coverage", 0.9995, "share of characters kept as pieces "
                     "(the rest fall back to bytes)")
  app.run(main)
