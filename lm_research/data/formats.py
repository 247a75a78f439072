"""Readers and validators for the local file formats (docs/design.md, "Local file formats").

Every reader yields records under the project's field names, whatever the file calls them:

  kind            fields                       files
  text            text                         .txt (blank lines separate documents, as in BERT's
                                               create_pretraining_data.py; a document keeps its
                                               lines) or .jsonl with a "text" field (a line is
                                               a document)
  classification  text, text_b, label          .tsv, header text[<TAB>text_b]<TAB>label, or .jsonl
  tagging         tokens, tags                 CoNLL: token<TAB>...<TAB>tag, blank line after each
                                               sentence
  seq2seq         input, target                .jsonl (or prompt/response, or text/label)
  chat            messages                     .jsonl, [{"role", "content"}, ...] per line, kept
                                               as its JSON text (chat_template.parse_messages)

Labels and tags stay strings here; ids are assigned from the training set downstream.
Malformed data ends in a one-line ValueError that names the file, the line and the fix. Bytes
that are not UTF-8 are replaced by U+FFFD with one warning per file instead: real corpora carry
a few, and stopping a run over one odd byte would be worse than a replacement character. A
file that is not text at all (NUL bytes, or mostly bytes that are not UTF-8: an executable or
a UTF-16 file renamed .txt) is refused in one line instead.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import json
import os
from typing import Callable, Iterable, Iterator

from absl import logging

from lm_research.data import chat_template, units
# A huge .txt file is stored as several records cut at line ends, so that no single record
# (read whole by every random access) grows without bound.
MAX_RECORD_CHARS = 1 << 20

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_warned_files: set[str] = set()


def _has_magic(path: str) -> bool:
  return any(c in path for c in "*?[")


def _locate(path: str) -> str:
  """A relative path is tried in the working directory, then the repository root.

  This lets the bundled ``data/`` corpus be named the same way from any directory.
  """
  if os.path.isabs(path) or os.path.exists(path) or (_has_magic(path) and glob.glob(path)):
    return path
  alt = os.path.join(_REPO_ROOT, path)
  if os.path.exists(alt) or (_has_magic(path) and glob.glob(alt, recursive=True)):
    return alt
  return path


def resolve_files(spec: str, kind: str, what: str = "data.train_path") -> list[str]:
  """The sorted absolute files named by ``spec``: a file, folder, glob, or several joined by commas.

  A folder contributes its files (recursively) with the kind's extensions.
  """
  exts = record_kind(kind).extensions
  wanted = "/".join(exts)
  if not spec or not spec.strip():
    raise ValueError(f"{what} is empty; set it to a file, folder or glob of {wanted} files")
  files = []
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    path = _locate(os.path.expanduser(part))
    if os.path.isfile(path):
      found = [path]
    elif os.path.isdir(path):
      found = [p for p in glob.glob(os.path.join(path, "**", "*"), recursive=True)
               if os.path.isfile(p) and p.lower().endswith(exts)]
      if not found:
        raise ValueError(f"{what}: folder {part!r} holds no {wanted} files; point it at the data")
    elif _has_magic(part):
      found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
      if not found:
        raise ValueError(f"{what}: {part!r} matches no files; check the pattern")
    else:
      raise ValueError(f"{what}: {part!r} does not exist; give a file, folder or glob of "
                       f"{wanted} files")
    files += sorted(found)
  return list(dict.fromkeys(os.path.abspath(f) for f in files))


# How much of a file is sniffed, and the share of undecodable characters that means "not text"
# (a few odd bytes are replaced with a warning; a GBK or binary file is mostly undecodable).
_SNIFF_BYTES = 1 << 16
_MAX_BAD_SHARE = 0.3


def check_text_file(path: str) -> None:
  """Raises a one-line ValueError if ``path`` does not look like UTF-8 text (first 64 KiB)."""
  with open(path, "rb") as f:
    head = f.read(_SNIFF_BYTES)
  if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    raise ValueError(f"{path} is UTF-16 text, not UTF-8; convert it (iconv -f UTF-16 -t UTF-8) "
                     "or remove it from the data path")
  if b"\x00" in head:
    raise ValueError(f"{path} is not text (it holds NUL bytes: a binary file, or UTF-16); "
                     "data files must be UTF-8 text: convert it or remove it from the data path")
  decoded = head.decode("utf-8", errors="replace")
  bad = decoded.count("\ufffd") - head.decode("utf-8", errors="ignore").count("\ufffd")
  if decoded and bad > _MAX_BAD_SHARE * len(decoded):
    raise ValueError(f"{path} is not UTF-8 text ({100 * bad // len(decoded)}% of its first "
                     f"{len(head)} bytes are not UTF-8); convert it to UTF-8 or remove it from "
                     "the data path")


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based number, text without the line break) of each line of a UTF-8 file."""
  check_text_file(path)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        line = raw.decode("utf-8", errors="replace")
        if path not in _warned_files:
          _warned_files.add(path)
          logging.warning("%s:%d (and maybe later lines) has bytes that are not UTF-8; they "
                          "were replaced by U+FFFD", path, number)
      yield number, line.rstrip("\r\n")


def read_text_file(path: str) -> Iterator[dict]:
  """The documents of a .txt file: blank lines separate them (BERT's pretraining-data format),
  a document keeps its lines, and one past MAX_RECORD_CHARS is split at line ends."""
  lines, size = [], 0
  for _, line in _lines(path):
    if not line.strip() or (lines and size + len(line) > MAX_RECORD_CHARS):
      if lines:
        yield {"text": "\n".join(lines)}
      lines, size = [], 0
    if line.strip():
      lines.append(line)
      size += len(line) + 1
  if lines:
    yield {"text": "\n".join(lines)}


def _json_lines(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-blank line of a JSON-lines file."""
  for number, line in _lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number} is not valid JSON ({e.msg}); each line must be one "
                       "JSON object") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{path}:{number} is a JSON {type(obj).__name__}, not an object; each "
                       "line must be one JSON object")
    yield number, obj


def _field(obj: dict, key: str, where: str, kind: str, optional: bool = False) -> str:
  """``obj[key]`` as a string; labels may be numbers or booleans in the file."""
  value = obj.get(key)
  if value is None:
    if optional:
      return ""
    need = ", ".join(f for f in KINDS[kind].fields if f not in KINDS[kind].optional)
    raise ValueError(f"{where} has no {key!r} field (it has {', '.join(sorted(obj)) or 'none'}); "
                     f"{kind} JSONL lines need {need}")
  if isinstance(value, str):
    return value
  if key == "label" and isinstance(value, (bool, int, float)):
    return str(value)
  raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")


def read_text_jsonl(path: str) -> Iterator[dict]:
  """One document per line from a .jsonl file with a ``text`` field (blank texts skipped)."""
  for number, obj in _json_lines(path):
    text = _field(obj, "text", f"{path}:{number}", "text")
    if text.strip():
      yield {"text": text}


def read_classification_jsonl(path: str) -> Iterator[dict]:
  """Examples from a .jsonl file with ``text``, ``label`` and optionally ``text_b``."""
  for number, obj in _json_lines(path):
    where = f"{path}:{number}"
    yield {"text": _field(obj, "text", where, "classification"),
           "text_b": _field(obj, "text_b", where, "classification", optional=True),
           "label": _field(obj, "label", where, "classification")}


def read_tsv(path: str) -> Iterator[dict]:
  """Examples from a .tsv whose header is ``text[<TAB>text_b]<TAB>label`` (more columns ignored)."""
  header = None
  for number, line in _lines(path):
    if header is None:
      header = line.split("\t")
      if "text" not in header or "label" not in header:
        raise ValueError(f"{path}: the first line must be the header text[<TAB>text_b]<TAB>label, "
                         f"got {line[:80]!r}")
      col = {name: header.index(name) for name in ("text", "text_b", "label") if name in header}
      continue
    if not line.strip():
      continue
    parts = line.split("\t")
    if len(parts) != len(header):
      raise ValueError(f"{path}:{number} has {len(parts)} tab-separated columns but the header "
                       f"has {len(header)} ({', '.join(header)}); fix the line (text must not "
                       "contain tabs)")
    label = parts[col["label"]].strip()
    if not label:
      raise ValueError(f"{path}:{number} has an empty label; give every example a label")
    yield {"text": parts[col["text"]],
           "text_b": parts[col["text_b"]] if "text_b" in col else "", "label": label}


def read_conll(path: str) -> Iterator[dict]:
  """Sentences from a CoNLL file: ``token<TAB>...<TAB>tag`` lines, blank lines between sentences."""
  tokens, tags = [], []
  for number, line in _lines(path):
    if not line.strip():
      if tokens:
        yield {"tokens": tokens, "tags": tags}
        tokens, tags = [], []
      continue
    if line.startswith("-DOCSTART-"):  # CoNLL-2003 document markers are not sentences
      continue
    if "\t" not in line:
      raise ValueError(f"{path}:{number} has no tab ({line[:40]!r}); CoNLL lines are "
                       "token<TAB>tag (tag in the last column), a blank line between sentences")
    columns = line.split("\t")
    tag = columns[-1].strip()
    if not tag or not columns[0]:
      raise ValueError(f"{path}:{number} has an empty {'tag' if columns[0] else 'token'}; CoNLL "
                       "lines are token<TAB>tag (tag in the last column)")
    tokens.append(columns[0])
    tags.append(tag)
  if tokens:
    yield {"tokens": tokens, "tags": tags}


# Other names a seq2seq line may use: prompt/response (instruction data), and text/label (a
# classification file read as text-to-text, T5-style).
SEQ2SEQ_ALIASES = {"input": ("input", "prompt", "text"), "target": ("target", "response", "label")}


def read_seq2seq_jsonl(path: str) -> Iterator[dict]:
  """Pairs from a .jsonl file with ``input`` and ``target`` fields (or an alias pair)."""
  for number, obj in _json_lines(path):
    where = f"{path}:{number}"
    yield {ours: _field(obj, next((k for k in names if k in obj), ours), where, "seq2seq")
           for ours, names in SEQ2SEQ_ALIASES.items()}


def read_chat_jsonl(path: str) -> Iterator[dict]:
  """Conversations from a .jsonl file with ``messages`` (each checked, stored as JSON text)."""
  for number, obj in _json_lines(path):
    where = f"{path}:{number}"
    if "messages" not in obj:
      raise ValueError(f"{where} has no 'messages' field (it has {', '.join(sorted(obj))}); "
                       "chat JSONL lines are {\"messages\": [{\"role\": ..., \"content\": ...}]}")
    messages = chat_template.parse_messages(obj["messages"], where)
    yield {"messages": json.dumps(messages, ensure_ascii=False)}


def _by_extension(jsonl_reader, other_reader):
  """A reader that reads .jsonl files with one reader and every other file with the other."""
  return lambda path: (jsonl_reader if path.lower().endswith(".jsonl") else other_reader)(path)


@dataclasses.dataclass(frozen=True)
class RecordKind:
  """One record format: its fields, the files a folder is searched for, how a file is read,
  what one record is, and how its fields are stored (local_builder.py) and read as text."""

  name: str
  fields: tuple[str, ...]
  extensions: tuple[str, ...]  # a file named explicitly is read whatever its extension
  unit: str  # what one record is, in messages and epoch counts
  read: Callable[[str], Iterator[dict]]  # one file -> its records
  texts: Callable[[dict], list[str]]  # a record's running text (to train a tokenizer on)
  optional: tuple[str, ...] = ()  # fields a record may leave empty
  tab_joined: tuple[str, ...] = ()  # list fields stored as one tab-joined string


KINDS: dict[str, RecordKind] = {k.name: k for k in (
    RecordKind("text", ("text",), (".txt", ".jsonl"), "documents",
               _by_extension(read_text_jsonl, read_text_file), lambda r: [r["text"]]),
    RecordKind("classification", ("text", "text_b", "label"), (".tsv", ".jsonl"), "examples",
               _by_extension(read_classification_jsonl, read_tsv),
               lambda r: [r["text"], r["text_b"]], optional=("text_b",)),
    # A CoNLL token or tag cannot hold a tab, and one string is several times faster to store
    # and read than TFDS's sequence of strings (46k Brown sentences: 35 s -> 5 s to prepare).
    RecordKind("tagging", ("tokens", "tags"), (".conll", ".tsv", ".txt", ".iob", ".bio"),
               "sentences", read_conll,
               # as running text: no spaces invented between Chinese characters
               lambda r: [units.join_units(r["tokens"])], tab_joined=("tokens", "tags")),
    RecordKind("seq2seq", ("input", "target"), (".jsonl",), "examples", read_seq2seq_jsonl,
               lambda r: [r["input"], r["target"]]),
    RecordKind("chat", ("messages",), (".jsonl",), "conversations", read_chat_jsonl,
               lambda r: [m["content"] for m in json.loads(r["messages"])]),
)}


def record_kind(name: str) -> RecordKind:
  """The record format called ``name``, or a one-line ValueError naming the known ones."""
  if name not in KINDS:
    raise ValueError(f"data.kind={name!r} is not a record format; use one of {', '.join(KINDS)}")
  return KINDS[name]


def iter_records(kind: str, files: Iterable[str]) -> Iterator[dict]:
  """Records of ``kind`` from ``files`` in order; an empty file is an error, not a skip."""
  spec = record_kind(kind)
  for path in files:
    count = 0
    for record in spec.read(path):
      count += 1
      yield record
    if not count:
      raise ValueError(f"{path} holds no {spec.unit} (it is empty); fill it or remove it "
                       "from the data path")


def check_labels(train_labels: Iterable[str], eval_labels: Iterable[str],
                 what: str = "label") -> None:
  """Raises a one-line ValueError if the eval set has labels the training set never shows."""
  missing = sorted(set(eval_labels) - set(train_labels))
  if missing:
    shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
    raise ValueError(f"the eval set has {len(missing)} {what}(s) the training set lacks: {shown}; "
                     "add training examples with them or remove them from the eval set")
