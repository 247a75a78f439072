"""A sweep's results: summary.csv and summary.md (parameters, status, final metrics of each run)
and comparison.png (the ranking metric over steps, and its final value per run)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Sequence

import numpy as np

from launch import sweep_spec
from lm_research import plot

_SHOWN_TRAIN = ("train/loss", "train/accuracy", "perf/tokens_per_sec")


def _final(series: dict[str, tuple[np.ndarray, np.ndarray]], key: str) -> float:
  """The last finite value of a metric (nan when it never had one)."""
  if key not in series:
    return math.nan
  values = series[key][1][np.isfinite(series[key][1])]
  return float(values[-1]) if values.size else math.nan


def collect(runs: Sequence[Any]) -> tuple[list[dict[str, Any]], list[str], dict[str, dict]]:
  """(rows, metric columns, each run's series): one row per run with status and final values."""
  series, rows, keys = {}, [], set()
  for run in runs:
    try:
      series[run.name] = plot.read_metrics(run.workdir)
    except ValueError:
      series[run.name] = {}
    keys |= set(series[run.name])
    step = max((int(s[0][-1]) for s in series[run.name].values() if s[0].size), default=0)
    if step >= run.steps:
      status = "done"
    elif run.returncode not in (None, 0):
      status = f"failed ({run.returncode})"
    else:
      status = "unfinished" if series[run.name] else "not started"
    rows.append({"run": run.name, "status": status, "step": step, **run.params})
  columns = [k for k in _SHOWN_TRAIN if k in keys]
  columns += sorted((k for k in keys if k.startswith("eval/")),
                    key=lambda k: (k != "eval/loss", k))
  for row, run in zip(rows, runs):
    row.update({k: _final(series[run.name], k) for k in columns})
  return rows, columns, series


def _rank(rows: list[dict], metric: str, goal: str) -> list[dict]:
  """Best run first by ``metric``; runs without it keep their order at the end."""
  sign = 1.0 if goal == "minimize" else -1.0
  return sorted(rows, key=lambda r: (not math.isfinite(r.get(metric, math.nan)),
                                     sign * r.get(metric, 0.0)
                                     if math.isfinite(r.get(metric, math.nan)) else 0.0))


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def write_summary(runs: Sequence[Any], workdir: str, spec: dict) -> list[str]:
  """Writes summary.csv, summary.md and (when any run has metrics) comparison.png."""
  rows, columns, series = collect(runs)
  metric, goal = sweep_spec.metric_of(spec)
  if not any(metric in s for s in series.values()):
    metric = "train/loss"  # e.g. a sweep without evaluation
  rows = _rank(rows, metric, goal)
  header = ["run", "status", "step", *spec["parameters"], *columns]
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, "summary.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in row.items()})
  md_path = os.path.join(workdir, "summary.md")
  with open(md_path, "w") as f:
    f.write(f"# Sweep {os.path.basename(os.path.abspath(workdir))}\n\n")
    f.write(f"{len(rows)} runs, best {metric} ({goal}) first.\n\n")
    f.write("| " + " | ".join(header) + " |\n")
    f.write("|" + "---|" * len(header) + "\n")
    for row in rows:
      f.write("| " + " | ".join(_cell(row.get(k, "")) for k in header) + " |\n")
  paths = [csv_path, md_path]
  if any(metric in s for s in series.values()):
    paths.append(_comparison_plot(rows, series, metric, os.path.join(workdir, "comparison.png")))
  return paths


def _comparison_plot(rows: list[dict], series: dict, metric: str, path: str) -> str:
  """Left: ``metric`` over steps for every run; right: its final value per run (best on top)."""
  plt = plot.plt
  fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 0.9 + max(3.5, 0.35 * len(rows))))
  for row in rows:
    if metric in series[row["run"]]:
      steps, values = series[row["run"]][metric]
      curves.plot(steps, values, label=row["run"], marker="o" if len(steps) < 30 else None,
                  markersize=3)
  curves.set_title(f"{metric} over training")
  curves.set_xlabel("step")
  curves.grid(alpha=0.3)
  curves.legend(fontsize="x-small")
  ranked = [r for r in rows if math.isfinite(r.get(metric, math.nan))]
  bars.barh(range(len(ranked)), [r[metric] for r in ranked])
  bars.set_yticks(range(len(ranked)), [r["run"] for r in ranked], fontsize="small")
  bars.invert_yaxis()
  bars.set_title(f"final {metric}")
  if ranked:
    low, high = min(r[metric] for r in ranked), max(r[metric] for r in ranked)
    pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
    bars.set_xlim(low - pad, high + pad)  # differences between runs are what matter
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plot.plt.close(fig)
  return path
