"""The project's TFDS builder for local files: text, TSV, JSONL, CoNLL → ArrayRecord splits.

Prepared once under ``DATA_DIR/local_files/KIND-FINGERPRINT/1.0.0`` and reused; the fingerprint
hashes the file paths, sizes and modification times, so editing, adding or removing a file
prepares a fresh copy instead of silently reading stale records. TensorFlow is not needed:
TFDS writes and reads ArrayRecord with its own protobuf code.

Records keep file order (shuffling belongs to Grain, which is seeded and checkpointable).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging as py_logging
import os
from typing import Iterator, Sequence

from absl import logging
import tensorflow_datasets as tfds

from lm_research.data import formats

# Bump when parsing changes, so that data prepared by older code is not reused.
FORMAT_VERSION = 3  # 3: blank lines separate .txt documents
# With no eval path, every HOLDOUT_EVERY-th unit (document or example) becomes the eval split.
HOLDOUT_EVERY = 20


def features(kind: str) -> tfds.features.FeaturesDict:
  """The stored features of a record kind: every field one string (labels and tags too; list
  fields tab-joined, see formats.RecordKind.tab_joined, which ``Source`` splits again)."""
  text = tfds.features.Text()
  return tfds.features.FeaturesDict({f: text for f in formats.record_kind(kind).fields})


def _stored(kind: str, record: dict) -> dict:
  """A record as stored: list fields tab-joined."""
  joined = formats.record_kind(kind).tab_joined
  return {k: "\t".join(v) if k in joined else v for k, v in record.items()}


def fingerprint(kind: str, train_files: Sequence[str], eval_files: Sequence[str]) -> str:
  """A short hash of everything that decides the prepared records."""
  h = hashlib.sha256(f"v{FORMAT_VERSION} {kind} holdout={HOLDOUT_EVERY}".encode())
  for split, files in (("train", train_files), ("eval", eval_files)):
    for path in files:
      st = os.stat(path)
      h.update(f"\n{split} {path} {st.st_size} {st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def heldout(n: int) -> set[int]:
  """Indices of the ``n`` units held out for eval: every 20th, or the last when fewer than 20."""
  if n >= HOLDOUT_EVERY:
    return set(range(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY))
  return {n - 1} if n >= 2 else set()


class LocalFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Local files of one record kind as 'train' and 'eval' splits."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS looks for a checksums file beside a builder's code, and that lookup imports the
  # `importlib_resources` backport which TFDS 4.9.10 does not declare for Python >= 3.9. This
  # builder downloads nothing, so it has no checksums and no code path to search.
  code_path = None

  def __init__(self, *, kind: str, train_files: Sequence[str], eval_files: Sequence[str],
               data_dir: str):
    self.kind = formats.record_kind(kind).name
    self.train_files, self.eval_files = list(train_files), list(eval_files)
    name = f"{kind}-{fingerprint(kind, self.train_files, self.eval_files)}"
    config = tfds.core.BuilderConfig(name=name, version=self.VERSION,
                                     description=f"{kind} records from {len(train_files)} files")
    with quiet_tfds_warnings():
      super().__init__(config=config, data_dir=data_dir, file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=features(self.kind),
                                 disable_shuffling=True)  # keep file order; Grain shuffles

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the files are local
    if self.eval_files:
      return {"train": self._generate_examples(self.train_files, None),
              "eval": self._generate_examples(self.eval_files, None)}
    n = sum(1 for _ in formats.iter_records(self.kind, self.train_files))
    unit = formats.record_kind(self.kind).unit
    if n == 1 and self.kind == "text":
      logging.info("data.eval_path is empty and there is one document: its last lines are the "
                   "eval split")
      return {"train": self._split_lines(eval_part=False),
              "eval": self._split_lines(eval_part=True)}
    held = heldout(n)
    if held:
      logging.info("data.eval_path is empty: holding out %d of %d %s (every %dth, or the last) "
                   "as the eval split", len(held), n, unit, HOLDOUT_EVERY)
    else:
      logging.warning("data.eval_path is empty and there is only one %s: no eval split",
                      unit[:-1])
    splits = {"train": self._generate_examples(self.train_files, held, keep=False)}
    if held:
      splits["eval"] = self._generate_examples(self.train_files, held, keep=True)
    return splits

  def _generate_examples(self, files: Sequence[str], held: set[int] | None,
                         keep: bool = False) -> Iterator[tuple[int, dict]]:
    """(key, record) for ``files``; with ``held``, only the held-out (keep) or the other units."""
    key = 0
    for i, record in enumerate(formats.iter_records(self.kind, files)):
      if held is None or (i in held) == keep:
        yield key, _stored(self.kind, record)
        key += 1
    if key == 0:
      raise ValueError(f"no {formats.record_kind(self.kind).unit} in {', '.join(files[:3])}; check the data")

  def _split_lines(self, eval_part: bool) -> Iterator[tuple[int, dict]]:
    """One document split into train (first lines) and eval (the last 1/20 of lines, at least 1)."""
    (record,) = formats.iter_records(self.kind, self.train_files)
    lines = record["text"].split("\n")
    if len(lines) < 2:
      raise ValueError(f"{self.train_files[0]} is one line, too little to hold some out for eval; "
                       "set data.eval_path")
    cut = len(lines) - max(1, len(lines) // HOLDOUT_EVERY)
    yield 0, {"text": "\n".join(lines[cut:] if eval_part else lines[:cut])}


class _DropExpectedWarnings(py_logging.Filter):
  """TFDS warns about two things that are normal here: our configs are unlisted by design, and
  a dataset about to be prepared has no dataset_info.json yet."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("Using custom data configuration" in message or "Variant folder" in message)


@contextlib.contextmanager
def quiet_tfds_warnings():
  """Drops TFDS's expected warnings (see _DropExpectedWarnings) inside the block."""
  logger = py_logging.getLogger("absl")
  drop = _DropExpectedWarnings()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def prepare(kind: str, train_path: str, eval_path: str, data_dir: str) -> LocalFiles:
  """Builds (or reuses) the ArrayRecord splits of local files and returns the prepared builder."""
  train_files = formats.resolve_files(train_path, kind, "data.train_path")
  eval_files = formats.resolve_files(eval_path, kind, "data.eval_path") if eval_path else []
  builder = LocalFiles(kind=kind, train_files=train_files, eval_files=eval_files,
                       data_dir=data_dir)
  with quiet_tfds_warnings():
    prepared = builder.is_prepared()
  if prepared:
    logging.info("reusing %s records prepared in %s%s", kind, builder.data_dir,
                 "" if eval_files else " (data.eval_path is empty: eval is held out from train)")
  else:
    logging.info("preparing %s records from %d train and %d eval files into %s", kind,
                 len(train_files), len(eval_files), builder.data_dir)
    tfds.disable_progress_bar()  # a bar per split is noise in training logs
    builder.download_and_prepare()
  return builder
