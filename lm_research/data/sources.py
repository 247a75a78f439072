"""Random-access data sources under the project's field names, for ``grain.MapDataset.source``.

``open_source(config.data, 'train' | 'eval', workdir)`` reads either a TFDS catalog dataset
(``data.source='lm1b'``, ``'glue/sst2'``, ...; ArrayRecord, random access, no TensorFlow) or the
project's local files (``data.source='files'``, prepared once by ``local_builder``). Either way
a record is a dict of Python values in one of four shapes (see ``formats.KINDS``):

  text            {'text': str}
  classification  {'text': str, 'text_b': str, 'label': str}
  tagging         {'tokens': list[str], 'tags': list[str]}
  seq2seq         {'input': str, 'target': str}

Labels and tags are strings (a catalog ClassLabel id becomes its name) so local and catalog
data look the same downstream; ``label_vocab`` gives the id order.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from lm_research import hosts, paths
from lm_research.data import formats
from lm_research.data import local_builder

# Catalog datasets we know: name (or base name before '/') → (kind, {our field: their feature},
# eval split). Others work when data.kind and data.fields are given.
CATALOG: dict[str, tuple[str, dict[str, str], str]] = {
    "lm1b": ("text", {"text": "text"}, "test"),
    "c4": ("text", {"text": "text"}, "validation"),
    "wikipedia": ("text", {"text": "text"}, "train"),  # Wikipedia dumps have only 'train'
    "imdb_reviews": ("classification", {"text": "text", "label": "label"}, "test"),
    "ag_news_subset": ("classification",
                       {"text": "title", "text_b": "description", "label": "label"}, "test"),
    "glue/cola": ("classification", {"text": "sentence", "label": "label"}, "validation"),
    "glue/sst2": ("classification", {"text": "sentence", "label": "label"}, "validation"),
    "glue/mrpc": ("classification", {"text": "sentence1", "text_b": "sentence2", "label": "label"},
                  "validation"),
    "glue/rte": ("classification", {"text": "sentence1", "text_b": "sentence2", "label": "label"},
                 "validation"),
    "glue/wnli": ("classification", {"text": "sentence1", "text_b": "sentence2", "label": "label"},
                  "validation"),
    "glue/qqp": ("classification", {"text": "question1", "text_b": "question2", "label": "label"},
                 "validation"),
    "glue/qnli": ("classification", {"text": "question", "text_b": "sentence", "label": "label"},
                  "validation"),
    "glue/mnli": ("classification", {"text": "premise", "text_b": "hypothesis", "label": "label"},
                  "validation_matched"),
    "conll2003": ("tagging", {"tokens": "tokens", "tags": "ner"}, "dev"),
    "cnn_dailymail": ("seq2seq", {"input": "article", "target": "highlights"}, "validation"),
    "xsum": ("seq2seq", {"input": "document", "target": "summary"}, "validation"),
    "gigaword": ("seq2seq", {"input": "document", "target": "summary"}, "validation"),
}
# 'wmt14_translate/de-en' and friends: translate from the first language into the second.
_TRANSLATE = re.compile(r"^\w*translate\w*/(\w+)-(\w+)$")
# Catalog builders live in lazily imported TFDS packages; these hold the text datasets.
_CATALOG_PACKAGES = ("text", "translate", "summarization")


class Source:
  """One split's records under our field names: ``len``, ``[i]`` and batch reads, as Grain wants."""

  def __init__(self, inner, kind: str, fields: Mapping[str, str],
               class_names: Mapping[str, list[str]] | None = None, description: str = "",
               tab_joined: tuple[str, ...] = ()):
    self.inner = inner
    self.kind = kind
    self.fields = dict(fields)  # our field → the stored feature
    self.class_names = dict(class_names or {})  # our field → names of a ClassLabel feature
    self.description = description
    self.tab_joined = tab_joined  # fields stored as one tab-joined string (local tagging)

  def __len__(self) -> int:
    return len(self.inner)

  def __getitem__(self, index: int) -> dict:
    return self._convert(self.inner[index])

  def __getitems__(self, indices) -> list[dict]:
    """Batch read (ArrayRecord reads many records in one call); Grain uses it when present."""
    if hasattr(self.inner, "__getitems__"):
      return [self._convert(r) for r in self.inner.__getitems__(indices)]
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f"Source({self.description}, kind={self.kind}, {len(self)} records)"

  def _convert(self, raw: Mapping[str, Any]) -> dict:
    record = {}
    for ours in formats.record_kind(self.kind).fields:
      if ours not in self.fields:  # only the optional second text can be absent
        record[ours] = ""
        continue
      value = _python(raw[self.fields[ours]])
      if ours in self.tab_joined:
        value = value.split("\t") if value else []
      names = self.class_names.get(ours)
      if names or ours in ("label", "tags"):  # class ids become their names; labels are strings
        to_name = (lambda v: names[int(v)]) if names else str
        value = [to_name(v) for v in value] if isinstance(value, list) else to_name(value)
      record[ours] = value
    return record


def _python(value: Any) -> Any:
  """Stored values as Python ones: bytes → str (odd bytes replaced), arrays → lists."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return value.item() if value.ndim == 0 else [_python(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):
    return [_python(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def catalog_entry(name: str) -> tuple[str, dict[str, str], str] | None:
  """(kind, fields, eval split) for a catalog name we know, matching 'base/config' then 'base'."""
  name = name.split(":")[0]
  if name in CATALOG:
    return CATALOG[name]
  if name.split("/")[0] in CATALOG:
    return CATALOG[name.split("/")[0]]
  m = _TRANSLATE.match(name)
  if m:
    return "seq2seq", {"input": m.group(1), "target": m.group(2)}, "validation"
  return None


def parse_fields(spec: str) -> dict[str, str]:
  """``'text=sentence,label=label'`` → {'text': 'sentence', 'label': 'label'}."""
  fields = {}
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    ours, sep, theirs = part.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
      raise ValueError(f"data.fields={spec!r}: write OURS=THEIRS pairs separated by commas, "
                       "e.g. 'text=sentence,label=label'")
    fields[ours.strip()] = theirs.strip()
  return fields


def _cfg(data_cfg, key: str, default):
  """A data-config value, tolerating configs written before the key existed."""
  value = data_cfg.get(key, default) if hasattr(data_cfg, "get") else getattr(data_cfg, key,
                                                                              default)
  return default if value is None else value


def open_source(data_cfg, split: str, workdir: str, kind: str | None = None) -> Source:
  """The 'train' or 'eval' split named by a ``config.data`` block, as a random-access Source.

  Process 0 opens it first, preparing what is not prepared yet (local files' ArrayRecords, a
  catalog dataset); the other processes then open what it prepared."""
  return hosts.process_0_first(f"open the {split} data",
                               lambda: _open_source(data_cfg, split, workdir, kind))


def _open_source(data_cfg, split: str, workdir: str, kind: str | None) -> Source:
  """open_source on one process."""
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: open 'train' or 'eval'")
  source = _cfg(data_cfg, "source", "files")
  if source == "synthetic":
    raise ValueError("data.source='synthetic' has no records to open; set data.source='files' "
                     "with data.train_path, or a TFDS catalog name such as 'lm1b'")
  kind = kind or _cfg(data_cfg, "kind", "")
  if source == "files":
    spec = formats.record_kind(kind or "text")
    data_dir = _cfg(data_cfg, "data_dir", "") or _prepared_dir(workdir)
    builder = local_builder.prepare(spec.name, _cfg(data_cfg, "train_path", ""),
                                    _cfg(data_cfg, "eval_path", ""), data_dir)
    if split not in builder.info.splits:
      raise ValueError("there is no eval data: data.eval_path is empty and the training data is "
                       "too small to hold some out; set data.eval_path")
    # Read through a read-only builder of the prepared folder: it pickles by path, as Grain's
    # worker processes need, while our builder would be rebuilt from its arguments.
    reader = tfds.builder_from_directory(builder.data_dir)
    return Source(reader.as_data_source(split=split), spec.name, {f: f for f in spec.fields},
                  description=f"{spec.name} files {builder.data_dir}:{split}",
                  tab_joined=spec.tab_joined)
  return _open_catalog(source, data_cfg, split, kind)


@functools.cache  # says where once per workdir, not once per split
def _prepared_dir(workdir: str) -> str:
  """Where local files' ArrayRecords are prepared: WORKDIR/tfds, or for a remote workdir a
  local cache folder (ArrayRecord reads and writes local files only without TensorFlow)."""
  if not paths.is_remote(workdir):
    return os.path.join(workdir, "tfds")
  local = paths.local_cache(workdir, "tfds")
  logging.info("Preparing the data records in %s: %s is remote, and ArrayRecord needs a local "
               "disk (set data.data_dir to choose another folder).", local, workdir)
  return local


def _open_catalog(name: str, data_cfg, split: str, kind: str) -> Source:
  """A TFDS catalog dataset's split, with its features renamed to ours."""
  for package in _CATALOG_PACKAGES:
    importlib.import_module(f"tensorflow_datasets.{package}")
  entry = catalog_entry(name)
  fields = parse_fields(_cfg(data_cfg, "fields", ""))
  if entry:
    kind = kind or entry[0]
    if not fields and kind == entry[0]:
      fields = entry[1]
  spec = formats.record_kind(kind or "text")
  kind = spec.name
  data_dir = _cfg(data_cfg, "data_dir", "") or None
  try:
    with local_builder.quiet_tfds_warnings():
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"data.source={name!r} is neither 'files', 'synthetic' nor a TFDS catalog "
                     "dataset; check the name at tensorflow.org/datasets/catalog") from None
  available = sorted(builder.info.features.keys())
  if not fields:
    fields = {f: f for f in spec.fields if f in available}
  needed = [f for f in spec.fields if f not in spec.optional]
  unknown = [theirs for theirs in fields.values() if theirs not in available]
  if unknown or any(f not in fields for f in needed):
    raise ValueError(f"cannot map {name!r} features ({', '.join(available)}) to {kind} fields "
                     f"({', '.join(needed)}): set data.fields, e.g. "
                     f"'{','.join(f + '=' + available[0] for f in needed)}'")
  split_name = _cfg(data_cfg, f"{split}_split", "") or (
      "train" if split == "train" else _eval_split(builder, entry))
  splits = list(builder.info.splits.keys())
  if splits and split_name not in splits:
    raise ValueError(f"{name!r} has no split {split_name!r} (it has {', '.join(splits)}); set "
                     f"data.{split}_split")
  inner = _catalog_data_source(builder, name, split_name, data_dir)
  names = {ours: _class_names(builder.info.features[theirs]) for ours, theirs in fields.items()}
  return Source(inner, kind, fields, {k: v for k, v in names.items() if v},
                description=f"tfds {name}:{split_name}")


def _eval_split(builder, entry) -> str:
  """The catalog's eval split: the table's, else the first of validation/test that exists."""
  splits = list(builder.info.splits.keys())
  for candidate in ([entry[2]] if entry else []) + ["validation", "test"]:
    if not splits or candidate in splits:
      return candidate
  return splits[0]


def _catalog_data_source(builder, name: str, split: str, data_dir: str | None):
  """Random access to a prepared catalog split; a one-line error when it is not there."""
  fix = (f"prepare it once with `tfds build {name} --file_format=array_record "
         f"--data_dir=DIR` where TFDS can download it, then set data.data_dir=DIR; or train "
         "on local files with --config.data.source=files --config.data.train_path=PATH "
         "--config.data.eval_path=PATH")
  try:
    with local_builder.quiet_tfds_warnings():
      prepared = builder.is_prepared()
    if not prepared:
      builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split=split)
  except Exception as e:  # download, TensorFlow-only preparation, or a TFRecord-only copy
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"TFDS dataset {name!r} split {split!r} is not readable from "
                     f"{data_dir or 'the default data dir'} ({reason}); {fix}") from e


def _class_names(feature) -> list[str] | None:
  """Names of a ClassLabel feature, or of a sequence of them (tags)."""
  inner = getattr(feature, "feature", feature)
  return list(inner.names) if isinstance(inner, tfds.features.ClassLabel) else None


def label_vocab(source: Source, field: str = "label") -> list[str]:
  """Labels (or tags) in id order: a catalog ClassLabel's order, else sorted from the records."""
  if field in source.class_names:
    return list(source.class_names[field])
  seen = set()
  for start in range(0, len(source), 1024):  # batch reads: one call per 1024 records
    for record in source.__getitems__(range(start, min(start + 1024, len(source)))):
      value = record[field]
      seen.update(value if isinstance(value, list) else [value])
  return sorted(seen)


def iter_texts(source: Source, limit: int | None = None) -> Iterator[str]:
  """The raw text of each record (every text field), e.g. to train a tokenizer on."""
  n = len(source) if limit is None else min(limit, len(source))
  for i in range(n):
    yield from (text for text in formats.record_kind(source.kind).texts(source[i]) if text)
