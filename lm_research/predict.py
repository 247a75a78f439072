"""``--mode=predict``: a trained workdir applied to a file, one JSON line out per input.

  python -m lm_research.main --config=configs/finetune_classification.py --workdir=runs/spam \\
      --mode=predict --config.predict.input=emails.txt --config.predict.output=out.jsonl

Input: plain lines (one text, or for tagging one whitespace-split sentence, per line), a .tsv
with a header (columns text[, text_b] or input), or .jsonl (text[, text_b], tokens, input or
prompt). Output per input:
  classification   {"text", "label", "probabilities": {label: p}}
  tagging          {"tokens", "tags"}
  generation       {"input", "output"}    (seq2seq, causal LM, span corruption)
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from lm_research import sharding, writers
from lm_research.tasks import evaluate as task_eval
from lm_research.tasks import examples as task_examples
from lm_research.tasks import generate

# What a JSONL/TSV input may call the text, per kind of prediction (first found wins).
_TEXT_KEYS = {"classification": ("text",), "tagging": ("tokens", "text"),
              "generation": ("input", "prompt", "text")}
_GENERATION_OPTIONS = ("strategy", "temperature", "top_k", "top_p", "num_beams",
                       "length_penalty")


def prediction_kind(exp) -> str:
  """'classification', 'tagging' or 'generation' for this run, or a one-line error."""
  if exp.task in ("classification", "tagging"):
    return exp.task
  if exp.config.objective in ("causal_lm", "seq2seq", "span_corruption"):
    return "generation"
  raise ValueError(f"--mode=predict has nothing to predict for objective="
                   f"{exp.config.objective!r}; fine-tune a task (configs/finetune_*.py) first")


def _record(kind: str, obj: dict, where: str) -> dict:
  """A JSONL object / TSV row as the record the task's row builder reads."""
  key = next((k for k in _TEXT_KEYS[kind] if k in obj), None)
  if key is None:
    raise ValueError(f"{where} has none of the fields {', '.join(_TEXT_KEYS[kind])}; give each "
                     "input one of them")
  value = obj[key]
  if kind == "tagging":
    return {"tokens": value.split() if isinstance(value, str) else [str(v) for v in value]}
  if kind == "classification":
    return {"text": str(value), "text_b": str(obj.get("text_b") or "")}
  return {"input": str(value)}


def read_inputs(path: str, kind: str) -> list[dict]:
  """The records of a plain-lines, .tsv or .jsonl input file (one-line errors for bad ones)."""
  if not path:
    raise ValueError("--mode=predict needs --config.predict.input=FILE (lines, .tsv or .jsonl)")
  if not os.path.isfile(path):
    raise ValueError(f"predict.input={path!r} is not a file")
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line.rstrip("\n") for line in f]
  records = []
  if path.endswith(".jsonl"):
    for number, line in enumerate(lines, 1):
      if line.strip():
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number} is not JSON ({e.msg}); write one object per "
                           "line") from None
        records.append(_record(kind, obj, f"{path}:{number}"))
  elif path.endswith(".tsv"):
    header = lines[0].split("\t") if lines else []
    for number, line in enumerate(lines[1:], 2):
      if line.strip():
        records.append(_record(kind, dict(zip(header, line.split("\t"))), f"{path}:{number}"))
  else:
    records = [_record(kind, {_TEXT_KEYS[kind][-1]: line}, path) for line in lines
               if line.strip()]
  if not records:
    raise ValueError(f"predict.input={path!r} holds no inputs; give one per line")
  return records


def _padded_batches(rows: list[dict], batch_size: int):
  """Host batches of ``batch_size`` rows; the last is filled with zero rows."""
  for start in range(0, len(rows), batch_size):
    part = rows[start:start + batch_size]
    batch = {k: np.stack([r[k] for r in part]) for k in part[0]}
    if len(part) < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - len(part),) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def _apply(exp, graphdef, params, records: list[dict], kind: str) -> dict[str, np.ndarray]:
  """The task's jitted prediction over every row of ``records``."""
  from lm_research.experiment import task_rows  # noqa: PLC0415  (experiment imports this module)
  build = task_rows(exp)
  rows = [row for i, record in enumerate(records) for row in build(record, i)]
  fn = task_eval.compiled(kind, graphdef, exp.mesh)
  parts: dict[str, list] = {}
  for host_batch in _padded_batches(rows, exp.config.predict.batch_size):
    out = jax.device_get(fn(params, sharding.global_batch(exp.mesh, host_batch)))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  return {k: np.concatenate(v)[:len(rows)] for k, v in parts.items()}


def predictions(exp, graphdef, params, records: list[dict], kind: str) -> list[dict]:
  """One output dict per record."""
  if kind == "classification":
    out = _apply(exp, graphdef, params, records, kind)
    _, probs = task_examples.document_probs(out["probs"], out["index"])  # windows averaged
    return [{**{k: v for k, v in r.items() if v}, "label": exp.labels[int(p.argmax())],
             "probabilities": {name: round(float(q), 6) for name, q in zip(exp.labels, p)}}
            for r, p in zip(records, probs)]
  if kind == "tagging":
    out = _apply(exp, graphdef, params, records, kind)
    tags: dict[int, list] = {}
    for i in range(len(out["index"])):
      starts = out["tag_weights"][i] > 0
      tags.setdefault(int(out["index"][i]), []).append(
          (int(out["word_offset"][i]), out["pred"][i][starts].tolist()))
    return [{"tokens": r["tokens"],
             "tags": [exp.labels[t] for _, ids in sorted(tags.get(i, [])) for t in ids]}
            for i, r in enumerate(records)]
  p = exp.config.predict
  outputs = generate.generate_texts(
      exp, graphdef, params, [r["input"] for r in records], batch_size=p.batch_size,
      max_new_tokens=p.max_new_tokens, seed=exp.config.seed,
      **{k: p[k] for k in _GENERATION_OPTIONS})
  return [{"input": r["input"], "output": o} for r, o in zip(records, outputs)]


def run(exp, graphdef, params, step: int) -> str:
  """Predicts every input of ``predict.input`` into ``predict.output``; returns its path."""
  if jax.process_count() > 1:
    raise ValueError("--mode=predict runs in one process; start it without --num_processes")
  kind = prediction_kind(exp)
  records = read_inputs(exp.config.predict.input, kind)
  output = exp.config.predict.output or os.path.join(exp.workdir, "predictions.jsonl")
  logging.info("Predicting %d inputs with the step-%d weights.", len(records), step)
  results = predictions(exp, graphdef, params, records, kind)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    for result in results:
      f.write(json.dumps(result, ensure_ascii=False) + "\n")
  writers.log_progress(f"wrote {len(results)} predictions to {output}", True)
  return output
