"""Where metrics go: ``WORKDIR/metrics.jsonl`` always, a console progress line, and more sinks.

Only process 0 writes. Each logged step is one JSON object: {"step": N, "train/loss": ...}.
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Mapping, Sequence

from absl import logging

from lm_research import paths


class MetricsWriter:
  """Appends one JSON line per logged step to ``WORKDIR/metrics.jsonl`` (process 0 only), and
  hands the same step to each extra sink (``lm_research.tracking``: W&B, TensorBoard)."""

  def __init__(self, workdir: str, *, is_main: bool = True, sinks: Sequence = ()):
    self.path = paths.as_path(workdir) / "metrics.jsonl"
    self.remote = paths.is_remote(workdir)
    self._lines = None  # a remote file's lines, to rewrite it whole (write)
    self.is_main = is_main
    self.sinks = list(sinks) if is_main else []
    if is_main:
      self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes ``metrics`` for ``step``; non-finite values become null (valid JSON)."""
    if not self.is_main:
      return
    record = {"step": int(step)}
    for key, value in metrics.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else None
    line = json.dumps(record) + "\n"
    if self.remote:
      # An object store cannot append: keep the lines and replace the object whole, so it holds
      # every step logged so far after each write (a buffer flushed now and then would lose the
      # steps since its last flush when the run dies; the rewrite costs O(file) per log step).
      if self._lines is None:
        self._lines = _lines(self.path)
      self._lines.append(line)
      paths.write_text(self.path, "".join(self._lines))
    else:
      with open(self.path, "a") as f:
        f.write(line)
    for sink in self.sinks:
      sink.write(step, {k: float(v) for k, v in metrics.items()})

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after ``step`` (a resumed run re-logs them from its checkpoint)."""
    for sink in self.sinks:
      sink.truncate_after(step)
    if not self.is_main or not self.path.exists():
      return
    self._lines = [line for line in _lines(self.path) if json.loads(line)["step"] <= step]
    paths.write_text(self.path, "".join(self._lines))


def read_records(workdir: str) -> list[dict]:
  """Every complete line of WORKDIR/metrics.jsonl as a dict (a line still being written by a
  live run is skipped); [] when there is no file yet."""
  records = []
  for line in _lines(paths.as_path(workdir) / "metrics.jsonl"):
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def _lines(path) -> list[str]:
  """The non-blank lines of a metrics file, each ending in a newline ([] when there is none)."""
  if not path.exists():
    return []
  return [line + "\n" for line in path.read_text().splitlines() if line.strip()]


def progress_line(step: int, total: int, metrics: Mapping[str, float], seconds_per_step: float,
                  tokens_per_sec: float, mfu: float | None) -> str:
  """'step 40/100 | loss 5.1234 | 12,345 tok/s | 0.120 s/step | MFU 3.2% | ETA 0:01:12'."""
  parts = [f"step {step}/{total}"]
  for key in ("train/loss", "train/accuracy", "train/mlm_accuracy", "eval/loss"):
    if key in metrics:
      parts.append(f"{key.split('/')[-1]} {float(metrics[key]):.4f}")
  parts.append(f"{tokens_per_sec:,.0f} tok/s")
  parts.append(f"{seconds_per_step:.3f} s/step")
  if mfu is not None:
    parts.append(f"MFU {100 * mfu:.1f}%")
  eta = datetime.timedelta(seconds=int(max(total - step, 0) * seconds_per_step))
  parts.append(f"ETA {eta}")
  return " | ".join(parts)


def log_progress(line: str, is_main: bool) -> None:
  """Prints a progress line from process 0 (absl logging, so it lands in log files too)."""
  if is_main:
    logging.info("%s", line)
