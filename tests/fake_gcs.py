"""A fake Google Cloud Storage for tests: ``gs://BUCKET/KEY`` is the file ``ROOT/BUCKET/KEY``.

Two doors onto the same folder, as on real GCS: an fsspec ``gs``/``gcs`` filesystem (what
``etils.epath`` opens for gs:// paths when TensorFlow is absent) and a small HTTP server
speaking the part of the GCS JSON API that TensorStore's ``gcs`` kvstore uses (Orbax writes
arrays through it). ``install(root)`` sets up both in this process. Run as a script,
``python tests/fake_gcs.py ROOT -- ARGS...`` installs them and runs ``lm_research.main ARGS``.
"""

from __future__ import annotations

import http.server
import importlib.machinery
import json
import os
import sys
import threading
import time
import types
import urllib.parse

import fsspec
from etils.epath import backend
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry


def filesystem_class(root: str) -> type:
  """An fsspec filesystem class mapping gs://bucket/key to ROOT/bucket/key."""

  class FakeGcsFileSystem(LocalFileSystem):
    """LocalFileSystem under ``root``, addressed by gs:// URLs."""

    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, **kwargs):
      # An object store writes any key: no folder has to exist first.
      super().__init__(*args, **{"auto_mkdir": True, **kwargs})

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = path[len(prefix):]
      if path.startswith(root):
        return path.rstrip("/")
      return os.path.join(root, path.lstrip("/")).rstrip("/")

    def unstrip_protocol(self, name):
      """ROOT/bucket/key -> gs://bucket/key."""
      return "gs://" + os.path.relpath(name, root)

    def glob(self, path, **kwargs):
      """Matches as bucket/key names, as gcsfs returns them."""
      return [os.path.relpath(p, root) for p in super().glob(path, **kwargs)]

  return FakeGcsFileSystem


def _generation(path: str) -> int:
  """An object's generation: its file's mtime in ns (0 for no object, as GCS)."""
  return os.stat(path).st_mtime_ns


def _metadata(bucket: str, name: str, path: str) -> dict:
  return {"kind": "storage#object", "bucket": bucket, "name": name,
          "size": str(os.path.getsize(path)), "generation": str(_generation(path)),
          "metageneration": "1"}


def handler_class(root: str) -> type:
  """A BaseHTTPRequestHandler serving the GCS JSON API over the files under ``root``."""
  lock = threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    """GET (object, metadata, list), POST (media upload), DELETE."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the test reads its own output
      pass

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None,
               content_type: str = "application/json"):
      self.send_response(code)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      for key, value in (headers or {}).items():
        self.send_header(key, value)
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _json(self, code: int, value: dict, headers: dict | None = None):
      self._reply(code, json.dumps(value).encode(), headers)

    def _parse(self):
      url = urllib.parse.urlsplit(self.path)
      query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
      parts = url.path.split("/")
      # /storage/v1/b/BUCKET/o[/OBJECT]  or  /upload/storage/v1/b/BUCKET/o
      i = parts.index("b")
      bucket = parts[i + 1]
      name = urllib.parse.unquote("/".join(parts[i + 3:])) if len(parts) > i + 3 else None
      return bucket, name, query

    def _precondition(self, query: dict, path: str) -> bool:
      wanted = query.get("ifGenerationMatch")
      if wanted is None:
        return True
      current = _generation(path) if os.path.isfile(path) else 0
      return int(wanted) == current

    def do_GET(self):  # noqa: N802  (http.server's name)
      bucket, name, query = self._parse()
      if name is None:
        return self._list(bucket, query)
      path = os.path.join(root, bucket, name)
      if not os.path.isfile(path):
        return self._json(404, {"error": {"code": 404, "message": "No such object"}})
      generation = str(_generation(path))
      if query.get("alt") != "media":
        return self._json(200, _metadata(bucket, name, path))
      with open(path, "rb") as f:
        data = f.read()
      headers = {"x-goog-generation": generation}
      ranged = self.headers.get("Range")  # bytes=A-B, bytes=A- or bytes=-N (the last N)
      if ranged:
        first, _, last = ranged.split("=", 1)[1].partition("-")
        start = int(first) if first else max(len(data) - int(last), 0)
        stop = int(last) + 1 if first and last else len(data)
        if start >= len(data) > 0:
          return self._json(416, {"error": {"code": 416, "message": "Range not satisfiable"}})
        chunk = data[start:stop]
        headers["Content-Range"] = f"bytes {start}-{start + len(chunk) - 1}/{len(data)}"
        return self._reply(206, chunk, headers, "application/octet-stream")
      return self._reply(200, data, headers, "application/octet-stream")

    def _list(self, bucket: str, query: dict):
      prefix = query.get("prefix", "")
      delimiter = query.get("delimiter")
      base = os.path.join(root, bucket)
      names = []
      for folder, _, files in os.walk(base):
        for f in files:
          key = os.path.relpath(os.path.join(folder, f), base)
          if (key.startswith(prefix) and key >= query.get("startOffset", "")
              and ".upload-" not in key):  # not an upload still being written
            names.append(key)
      items, prefixes = [], set()
      for key in sorted(names):
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
          prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
        else:
          items.append(_metadata(bucket, key, os.path.join(base, key)))
      out = {"kind": "storage#objects", "items": items}
      if prefixes:
        out["prefixes"] = sorted(prefixes)
      return self._json(200, out)

    def do_POST(self):  # noqa: N802
      bucket, _, query = self._parse()
      length = int(self.headers.get("Content-Length", 0))
      data = self.rfile.read(length)
      name = query["name"]
      path = os.path.join(root, bucket, name)
      with lock:
        if not self._precondition(query, path):
          return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        previous = _generation(path) if os.path.isfile(path) else 0
        tmp = f"{path}.upload-{threading.get_ident()}"
        with open(tmp, "wb") as f:
          f.write(data)
        # The generation is the mtime: make it grow on every write, even within a clock tick.
        generation = max(time.time_ns(), previous + 1)
        os.utime(tmp, ns=(generation, generation))
        os.replace(tmp, path)
        return self._json(200, _metadata(bucket, name, path))

    def do_DELETE(self):  # noqa: N802
      bucket, name, query = self._parse()
      path = os.path.join(root, bucket, name)
      with lock:
        if not os.path.isfile(path):
          return self._json(404, {"error": {"code": 404, "message": "No such object"}})
        if not self._precondition(query, path):
          return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
        os.remove(path)
        return self._reply(204)

  return Handler


class _Bucket:
  """What Orbax asks google.cloud.storage about a bucket: a flat (not hierarchical) namespace."""

  hierarchical_namespace_enabled = False


class _StorageClient:
  """google.cloud.storage.Client's get_bucket, the one call Orbax makes for gs:// steps."""

  def get_bucket(self, name: str) -> _Bucket:
    """The bucket ``name`` (every bucket exists)."""
    return _Bucket()


def _fake_storage_module() -> None:
  """Puts a google.cloud.storage with a Client into sys.modules (the real one is not installed
  here and would ask Google for credentials)."""
  storage = types.ModuleType("google.cloud.storage")
  storage.__spec__ = importlib.machinery.ModuleSpec("google.cloud.storage", None)
  storage.Client = _StorageClient
  cloud = sys.modules.get("google.cloud") or types.ModuleType("google.cloud")
  cloud.storage = storage
  sys.modules["google.cloud"] = cloud
  sys.modules["google.cloud.storage"] = storage


def install_filesystem(root: str) -> None:
  """Registers the fake gs:// filesystem with fsspec (for etils.epath)."""
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, filesystem_class(os.path.abspath(root)),
                                   clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # noqa: SLF001  (etils caches by protocol)


def uninstall_filesystem() -> None:
  """Undoes install_filesystem: gs:// is gcsfs's again (or unknown, without gcsfs)."""
  for protocol in ("gs", "gcs"):
    _registry.pop(protocol, None)  # fsspec has no unregister
  backend.fsspec_backend._get_filesystem.cache_clear()  # noqa: SLF001


def install(root: str) -> http.server.ThreadingHTTPServer:
  """Registers the fake gs:// filesystem and storage client and starts the HTTP server (a
  daemon thread), pointing TensorStore at it; returns the server."""
  root = os.path.abspath(root)
  install_filesystem(root)
  _fake_storage_module()
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class(root))
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
  os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "fake-token"
  return server


if __name__ == "__main__":
  install(sys.argv[1])
  from lm_research import main  # noqa: PLC0415  (after the fake is in place)

  sys.argv = ["lm_research.main", *sys.argv[sys.argv.index("--") + 1:]]
  main.run()
