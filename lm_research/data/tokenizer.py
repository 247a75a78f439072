"""Tokenizers: one interface over SentencePiece (the default) and Hugging Face files.

``Tokenizer`` gives text ↔ ids plus the special ids each model family needs:

  encoder          pad, unk, cls, sep, mask           ([PAD] [UNK] [CLS] [SEP] [MASK])
  decoder          eos (pad falls back to eos, as in GPT-2)   (<pad> <|endoftext|> <unk>)
  encoder_decoder  pad, eos, 100 sentinels            (<pad> </s> <unk> <extra_id_0..99>)

SentencePiece models are trained here with byte fallback and no normalisation, and always
hold the space piece '▁' (and, when the vocabulary has room, every printable ASCII
character), so any text round-trips: ``decode(encode(text)) == text``, also spaces and Latin
text in a tokenizer trained on Chinese (only '▁' itself, U+2581, comes back as a space). The
character coverage is lowered where needed so that the characters fit the vocabulary (a
Chinese corpus has thousands; ``char_coverage.py``); rarer characters fall back to UTF-8
byte pieces. The choice is logged in one line. Hugging Face ``tokenizer.json`` and BERT
``vocab.txt`` files load behind the same interface when a model comes from Hugging Face.

Training one lives in ``tokenizer_training.py``.
"""

from __future__ import annotations

import abc
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
import tokenizers

from lm_research import paths
from lm_research.data import chat_template

FAMILIES = ("encoder", "decoder", "encoder_decoder")
NUM_SENTINELS = 100
SENTINEL = "<extra_id_{}>"
# Names a special token goes by in the tokenizers we load (BERT, GPT-2, T5, RoBERTa, LLaMA).
_NAMES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
          "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"),
          "eos": ("<|endoftext|>", "</s>", "<eos>"), "bos": ("<s>", "<bos>")}
# What each family cannot work without, and what for (the error message says it).
_REQUIRED = {"encoder": {"pad": "padding", "cls": "[CLS]", "sep": "[SEP]", "mask": "masked LM"},
             "decoder": {"eos": "document ends"},
             "encoder_decoder": {"pad": "padding", "eos": "sequence ends"}}


def check_family(family: str) -> str:
  if family not in FAMILIES:
    raise ValueError(f"family={family!r} is not a model family; use one of {', '.join(FAMILIES)}")
  return family


def _is_cjk(ch: str) -> bool:
  """CJK ideographs are words of their own (as in BERT), so whole-word masking treats them so."""
  cp = ord(ch)
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class Tokenizer(abc.ABC):
  """Text ↔ ids and the family's special ids; the same interface for every backend."""

  family: str
  vocab_size: int
  pad_id: int
  eos_id: int | None
  bos_id: int | None
  unk_id: int | None
  cls_id: int | None
  sep_id: int | None
  mask_id: int | None
  sentinel_ids: list[int]  # sentinel_ids[0] is <extra_id_0>, the first one span corruption uses
  word_starts: np.ndarray  # bool [vocab_size]: does this token begin a word?

  def _set_specials(self, family: str, lookup: Callable[[str], int | None],
                    declared: dict[str, int | None], where: str) -> None:
    """Finds each special id (declared by the model, else by name) and checks the family's needs."""
    self.family = check_family(family)
    ids = {}
    for role, names in _NAMES.items():
      ids[role] = declared.get(role)
      for name in names:
        if ids[role] is None:
          ids[role] = lookup(name)
    if ids["pad"] is None and family == "decoder":
      ids["pad"] = ids["eos"]  # GPT-2 has no pad token; padding is masked out anyway
    for role, purpose in _REQUIRED[family].items():
      if ids[role] is None:
        raise ValueError(f"tokenizer {where} has no {_NAMES[role][0]} token ({role}, needed for "
                         f"{purpose} by the {family} family); train one with `python -m "
                         f"lm_research.data.tokenizer_training --family={family}` or leave "
                         "data.tokenizer_path empty to train one")
    self.sentinel_ids = []
    if family == "encoder_decoder":
      self.sentinel_ids = [lookup(SENTINEL.format(i)) for i in range(NUM_SENTINELS)]
      if None in self.sentinel_ids:
        missing = SENTINEL.format(self.sentinel_ids.index(None))
        raise ValueError(f"tokenizer {where} has no {missing} token (span-corruption sentinel, "
                         "needed by the encoder_decoder family); train one with `python -m "
                         "lm_research.data.tokenizer_training --family=encoder_decoder`")
    for role in _NAMES:
      setattr(self, f"{role}_id", ids[role])

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids of ``text``, without any special tokens added."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text (backends encode a batch in parallel)."""
    return [self.encode(t) for t in texts]

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text of ``ids``; pad/eos/bos/cls/sep/mask and ids outside the vocabulary are dropped."""

  @abc.abstractmethod
  def id_to_piece(self, i: int) -> str:
    """The vocabulary entry of id ``i``."""

  def is_word_start(self, i: int) -> bool:
    """Whether token ``i`` begins a word (the first token of a text always does)."""
    return bool(self.word_starts[i])

  @abc.abstractmethod
  def save(self, path: str) -> None:
    """Writes the tokenizer to ``path`` so that ``load_tokenizer(path, family)`` restores it."""

  def _dropped_on_decode(self) -> set[int]:
    return {i for i in (self.pad_id, self.eos_id, self.bos_id, self.cls_id, self.sep_id,
                        self.mask_id) if i is not None}

  def __repr__(self) -> str:
    return f"{type(self).__name__}(family={self.family}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; T5's spiece.model gets its 100 sentinels appended, as T5 does."""

  def __init__(self, model_proto: bytes, family: str, where: str = "(SentencePiece model)"):
    self._proto, self._where = model_proto, where
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(model_proto)
    except RuntimeError:
      raise ValueError(f"{where} is not a SentencePiece model; give a .model file, a "
                       "tokenizer.json or a vocab.txt") from None
    self._sp = sp
    self._real = sp.get_piece_size()

    def piece_id(piece: str) -> int | None:
      i = sp.piece_to_id(piece)
      return i if sp.id_to_piece(i) == piece else None

    # T5's own spiece.model lacks <extra_id_N>: T5 appends them after the vocabulary, in
    # reverse (extra_id_0 is the last id). Models trained here carry them as pieces instead.
    self._extra = NUM_SENTINELS if (family == "encoder_decoder"
                                    and piece_id(SENTINEL.format(0)) is None) else 0
    self.vocab_size = self._real + self._extra
    extra = {SENTINEL.format(i): self.vocab_size - 1 - i for i in range(self._extra)}
    declared = {role: (i if i >= 0 else None) for role, i in (
        ("pad", sp.pad_id()), ("eos", sp.eos_id()), ("bos", sp.bos_id()), ("unk", sp.unk_id()))}
    self._set_specials(family, lambda p: extra.get(p, piece_id(p)), declared, where)
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    starts = np.ones(self.vocab_size, bool)  # specials and appended sentinels stand alone
    for i, p in enumerate(proto.pieces):
      if p.type == piece_type.BYTE:  # a byte continues whatever character it is part of
        starts[i] = False
      elif p.type in (piece_type.NORMAL, piece_type.UNUSED):
        starts[i] = p.piece.startswith("\u2581") or _is_cjk(p.piece[0])
    self.word_starts = starts
    self._drop = self._dropped_on_decode()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    out, run = [], []
    for i in (int(i) for i in ids):
      if i in self._drop or not 0 <= i < self.vocab_size:
        continue
      if i < self._real:
        run.append(i)
      else:  # an appended sentinel: decode the text before it, then spell it out
        out += [self._sp.decode(run), self.id_to_piece(i)]
        run = []
    return "".join(out + [self._sp.decode(run)])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i) if i < self._real else SENTINEL.format(self.vocab_size - 1 - i)

  def save(self, path: str) -> None:
    paths.write_bytes(path, self._proto)  # whole: never a half-written tokenizer to load

  def __getstate__(self):
    return {"proto": self._proto, "family": self.family, "where": self._where}

  def __setstate__(self, state):
    self.__init__(state["proto"], state["family"], state["where"])


class HuggingFaceTokenizer(Tokenizer):
  """A Hugging Face ``tokenizers`` tokenizer (from tokenizer.json, or a BERT vocab.txt)."""

  def __init__(self, tok: tokenizers.Tokenizer, family: str, where: str = "(tokenizer.json)",
               declared: dict[str, int] | None = None):
    self._tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    # ``declared``: the folder's own bos/eos/... (Llama 3's <|end_of_text|>, Qwen2's
    # <|endoftext|>), which win over guesses by name.
    self._set_specials(family, tok.token_to_id, declared or {}, where)
    added = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    wordpiece = isinstance(tok.model, tokenizers.models.WordPiece)
    starts = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      piece = tok.id_to_token(i) or ""
      if i in added or not piece:
        starts[i] = True
      elif wordpiece:
        starts[i] = not piece.startswith("##")
      else:  # SentencePiece-style '▁' (T5, LLaMA) or byte-level 'Ġ' (GPT-2) marks a space before
        starts[i] = piece[0] in "\u2581\u0120" or _is_cjk(piece[0])
    self.word_starts = starts
    self._drop = self._dropped_on_decode()

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    keep = [i for i in (int(i) for i in ids) if i not in self._drop and 0 <= i < self.vocab_size]
    return self._tok.decode(keep, skip_special_tokens=False)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(i)

  def save(self, path: str) -> None:
    paths.write_bytes(path, self._tok.to_str().encode())


def _bert_lowercase(vocab_file: str, vocab: dict[str, int]) -> bool:
  """Whether a BERT vocabulary is uncased: tokenizer_config.json says, else the vocabulary does."""
  config = os.path.join(os.path.dirname(vocab_file), "tokenizer_config.json")
  if os.path.exists(config):
    with open(config) as f:
      value = json.load(f).get("do_lower_case")
    if value is not None:
      return bool(value)
  words = [w for w in vocab if not (w.startswith("[") and w.endswith("]"))]
  return sum(any(c.isupper() for c in w) for w in words) <= 0.01 * max(len(words), 1)


def _wordpiece(vocab_file: str) -> tokenizers.Tokenizer:
  """The BERT tokenizer (normaliser, pre-tokeniser, WordPiece) of a vocab.txt."""
  vocab = tokenizers.models.WordPiece.read_file(vocab_file)
  if "[UNK]" not in vocab:
    raise ValueError(f"{vocab_file} has no [UNK] entry; is it a BERT vocab.txt?")
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(
      lowercase=_bert_lowercase(vocab_file, vocab))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.decoder = tokenizers.decoders.WordPiece()
  tok.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab])
  return tok


def load_tokenizer(path: str, family: str) -> Tokenizer:
  """A tokenizer.json, BERT vocab.txt or SentencePiece .model, or a folder holding one."""
  check_family(family)
  paths.check_filesystem(path)
  if not paths.exists(path):
    raise ValueError(f"tokenizer {path!r} does not exist; give a .model, tokenizer.json, "
                     "vocab.txt or a folder with one (or leave data.tokenizer_path empty to "
                     "train one)")
  folder = paths.as_path(path)
  if folder.is_dir():
    names = sorted(p.name for p in folder.iterdir())
    found = [n for n in ("tokenizer.json", "vocab.txt", "spiece.model") if n in names]
    found += [n for n in names if n.endswith(".model")]
    if not found:
      raise ValueError(f"folder {path!r} holds no tokenizer.json, vocab.txt or *.model; point "
                       "data.tokenizer_path at the tokenizer file")
    path = os.path.join(path, found[0])
  if path.endswith(".json"):
    try:
      tok = tokenizers.Tokenizer.from_str(paths.as_path(path).read_text())
    except Exception as e:  # noqa: BLE001  (tokenizers raises its own type on a bad file)
      raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({e})") from None
    return HuggingFaceTokenizer(tok, family, path,
                                chat_template.declared_ids(os.path.dirname(path), tok.token_to_id))
  if path.endswith(".txt"):
    return HuggingFaceTokenizer(_wordpiece(path), family, path)
  # Read as bytes (SentencePiece's model_proto), so a model in a remote workdir loads as well.
  return SentencePieceTokenizer(paths.as_path(path).read_bytes(), family, path)
