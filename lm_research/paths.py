"""Workdir paths, local or remote (``gs://``, ``s3://``, ...), through one abstraction: etils.epath.

Orbax reads and writes checkpoints through ``epath``; everything else under a workdir (metrics,
config, labels, tokenizer, plots, the W&B run id) goes through the helpers here too, so a
``--workdir=gs://bucket/run`` works as a local folder does. Without TensorFlow, epath opens
``gs://`` with fsspec's ``gcs`` filesystem, and Orbax asks google.cloud.storage about the
bucket (``pip install gcsfs google-cloud-storage``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re

import fsspec
from etils import epath


def is_remote(path) -> bool:
  """Whether ``path`` is a URI of a non-local filesystem (gs://, s3://, ...), not a local path."""
  scheme, sep, _ = str(path).partition("://")
  return bool(sep) and scheme != "file" and bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme))


def resolve(path) -> str:
  """A workdir as a run names it: a remote URI unchanged, a local path made absolute."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def as_path(path) -> epath.Path:
  """``path`` (a str or a Path) as an epath.Path, made absolute when local."""
  return epath.Path(resolve(path))


def exists(path) -> bool:
  """Whether ``path`` (local or remote) exists; an empty path does not (as os.path.exists)."""
  return bool(os.fspath(path)) and as_path(path).exists()


def check_filesystem(path) -> None:
  """Raises a one-line ValueError when ``path``'s remote filesystem cannot be opened here (a
  package is missing), before any work is done; local paths pass."""
  if not is_remote(path):
    return
  scheme = str(path).partition("://")[0]
  try:
    fsspec.get_filesystem_class(scheme)
    # Orbax imports google.cloud.storage for every gs:// checkpoint directory (its package,
    # not ours: only its presence is checked here).
    if scheme in ("gs", "gcs") and importlib.util.find_spec("google.cloud.storage") is None:
      raise ImportError("google.cloud.storage")
  except (ImportError, ValueError):
    need = {"gs": "gcsfs google-cloud-storage", "gcs": "gcsfs google-cloud-storage",
            "s3": "s3fs"}.get(scheme)
    hint = f"pip install {need}" if need else f"install an fsspec filesystem for {scheme}://"
    raise ValueError(f"cannot open {path}: this Python has no {scheme}:// filesystem; {hint}, "
                     "or use a local path") from None


def write_bytes(path, data: bytes) -> None:
  """Writes a small file whole, so a reader never sees it half-written: locally through a
  temporary file and a rename; an object store replaces the object whole on close anyway."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = f"{path}.tmp{os.getpid()}"  # one per process: several may write the same file
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path, text: str) -> None:
  """write_bytes for text (UTF-8)."""
  write_bytes(path, text.encode("utf-8"))


def move(source, target) -> None:
  """Renames a folder. An object store has neither renames nor folders (one holding no object
  yet does not exist, so epath's rename refuses the target): there each object is copied, then
  the originals deleted."""
  source, target = as_path(source), as_path(target)
  if not is_remote(source):
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    return
  _copy_objects(source, target)
  source.rmtree()


def _copy_objects(source: epath.Path, target: epath.Path) -> None:
  for child in source.iterdir():
    if child.is_dir():
      _copy_objects(child, target / child.name)
    else:
      child.copy(target / child.name)


def local_cache(path, what: str) -> str:
  """A local folder standing in for ``path/what`` when ``path`` is remote, for the few writers
  that need a local disk (W&B's files, TFDS's prepared records): under $XDG_CACHE_HOME (else
  ~/.cache)/lm_research/, the same folder on every rerun of the same workdir on this machine."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(path))[-80:]
  digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
  return os.path.join(cache, "lm_research", f"{name}-{digest}", what)


def save_figure(fig, path, **kwargs) -> str:
  """Saves a matplotlib figure to ``path`` (local or remote: rendered in memory, then written
  whole); returns the path."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(str(path))[1][1:] or "png", **kwargs)
  write_bytes(path, buffer.getvalue())
  return str(path)
