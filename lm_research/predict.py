"""``--mode=predict``: a trained workdir applied to a file, one JSON line out per input.

  python -m lm_research.main --config=configs/finetune_classification.py --workdir=runs/spam \\
      --mode=predict --config.predict.input=emails.txt --config.predict.output=out.jsonl

Input: plain lines (one text, or for tagging one whitespace-split sentence, per line), a .tsv
with a header (columns text[, text_b] or input), or .jsonl (text[, text_b], tokens, input or
prompt). Output: exactly one JSON line per input line (after a .tsv's header), in order, each
with its 1-based "line" number and "truncated" (the input was longer than a row and was cut):
  classification   {"line", "text", "label", "probabilities": {label: p}, "truncated"}
  tagging          {"line", "tokens", "tags", "truncated"}
  generation       {"line", "input", "output", "truncated"}   (seq2seq, causal LM, span corruption)
  chat             {"line", "input", "output", "truncated"}   a line is a user message (or JSONL
                   "messages", a conversation); the output is the assistant's reply, generated
                   after the chat template's generation prompt up to an end-of-turn or EOS id
  a line with nothing to predict (blank, not UTF-8, not JSON, no text field): {"line", "error"}
The closing log line counts the errors and the truncated inputs.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from lm_research import paths, sharding, writers
from lm_research.data import inputs, length_buckets, units
from lm_research.data import chat_template
from lm_research.tasks import chat_examples
from lm_research.tasks import evaluate as task_eval
from lm_research.tasks import examples as task_examples
from lm_research.tasks import generate

# What a JSONL/TSV input may call the text, per kind of prediction (first found wins).
_TEXT_KEYS = {"classification": ("text",), "tagging": ("tokens", "text"),
              "generation": ("input", "prompt", "text"),
              "chat": ("messages", "input", "prompt", "text")}
_GENERATION_OPTIONS = ("strategy", "temperature", "top_k", "top_p", "num_beams",
                       "length_penalty")


def prediction_kind(exp) -> str:
  """'classification', 'tagging' or 'generation' for this run, or a one-line error."""
  if exp.task is not None:
    return exp.task.prediction
  if exp.model_cfg.family != "encoder":  # a pretrained decoder or encoder-decoder continues text
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
    return {"tokens": units.split_units(value) if isinstance(value, str)
            else [str(v) for v in value]}
  if kind == "classification":
    return {"text": str(value), "text_b": str(obj.get("text_b") or "")}
  if kind == "chat":  # a user message, or a whole conversation to reply to
    if key == "messages":
      return {"input": value,
              "messages": chat_template.parse_messages(value, where, need_assistant=False)}
    return {"input": str(value), "messages": [{"role": "user", "content": str(value)}]}
  return {"input": str(value)}


class Input(NamedTuple):
  """One line of the input file: its number, and its record or why it has none."""
  line: int
  record: dict | None
  error: str | None = None


def _decoded(raw: bytes) -> tuple[str | None, str | None]:
  """(text, None), or (None, why) for bytes that are not UTF-8."""
  try:
    return raw.decode("utf-8").rstrip("\r"), None
  except UnicodeDecodeError as e:
    return None, (f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the "
                  "file as UTF-8")


def _parse(kind: str, text: str, number: int, path: str, header: list[str] | None) -> dict:
  """The record of one non-blank line (a ValueError says why it has none)."""
  where = f"{path}:{number}"
  if path.endswith(".jsonl"):
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} is not JSON ({e.msg}); write one object per line") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{where} is not a JSON object; write one object per line")
    return _record(kind, obj, where)
  if header is not None:
    return _record(kind, dict(zip(header, text.split("\t"))), where)
  return _record(kind, {_TEXT_KEYS[kind][-1]: text}, where)


def read_inputs(path: str, kind: str) -> list[Input]:
  """One ``Input`` per line of a plain-lines, .tsv (after its header) or .jsonl file, in order;
  a blank, non-UTF-8 or malformed line carries an error instead of a record. A file with no
  readable line at all is a one-line ValueError."""
  if not path:
    raise ValueError("--mode=predict needs --config.predict.input=FILE (lines, .tsv or .jsonl)")
  if not paths.as_path(path).is_file():
    raise ValueError(f"predict.input={path!r} is not a file")
  raw_lines = paths.as_path(path).read_bytes().split(b"\n")
  if raw_lines and not raw_lines[-1]:
    raw_lines.pop()  # the newline that ends the last line starts no new one
  header, first = None, 1
  if path.endswith(".tsv") and raw_lines:
    header, first = (_decoded(raw_lines[0])[0] or "").split("\t"), 2
  inputs, failures = [], []
  for number, raw in enumerate(raw_lines[first - 1:], first):
    text, error = _decoded(raw)
    if text is not None and not text.strip():
      error = "blank line"
    if error is None:
      try:
        inputs.append(Input(number, _parse(kind, text, number, path, header)))
        continue
      except ValueError as e:
        error = str(e)
        failures.append(error)
    inputs.append(Input(number, None, error))
  if not any(i.record for i in inputs):
    raise ValueError(failures[0] if failures else
                     f"predict.input={path!r} holds no inputs; give one per line")
  return inputs


def _apply(exp, graphdef, params, records: list[dict], kind: str) -> dict[str, np.ndarray]:
  """The task's jitted prediction over every row of ``records``, in batches of similar length
  (data/length_buckets.py); rows come back in length order, ``index`` says whose they are."""
  from lm_research.experiment import task_rows  # noqa: PLC0415  (experiment imports this module)
  build = task_rows(exp)
  prepared = length_buckets.PreparedRows(
      [row for i, record in enumerate(records) for row in build(record, i)],
      max(exp.config.data.length_buckets, 1), inputs.bucket_multiple(exp.config))
  batches = length_buckets.BucketedBatches(prepared, batch_size=exp.config.predict.batch_size,
                                           seed=0, shuffle=False, finite=True)
  fn = task_eval.compiled(kind, graphdef, exp.mesh)
  parts: dict[str, list] = {}
  for host_batch in batches:
    out = jax.device_get(fn(params, sharding.global_batch(exp.mesh, host_batch)))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  # The last batch's filler rows come last (length order puts them at the end).
  return {k: length_buckets.concat_rows(v)[:len(prepared)] for k, v in parts.items()}


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
  if kind == "chat":
    replies, _ = chat_examples.generate_replies(
        exp, graphdef, params, [r["messages"] for r in records], batch_size=p.batch_size,
        max_new_tokens=p.max_new_tokens, seed=exp.config.seed,
        **{k: p[k] for k in _GENERATION_OPTIONS})
    return [{"input": r["input"], "output": o} for r, o in zip(records, replies)]
  outputs = generate.generate_texts(
      exp, graphdef, params, [r["input"] for r in records], batch_size=p.batch_size,
      max_new_tokens=p.max_new_tokens, seed=exp.config.seed,
      **{k: p[k] for k in _GENERATION_OPTIONS})
  return [{"input": r["input"], "output": o} for r, o in zip(records, outputs)]


def truncated(exp, kind: str, record: dict) -> bool:
  """Whether the model sees only part of ``record``: its tokens do not fit a row (a single
  classification text under data.truncation=windows is read whole, over several rows)."""
  tok, seq_len = exp.tokenizer, exp.config.train.seq_len
  encoder = exp.model_cfg.family == "encoder"
  if kind == "classification":
    a, pair = len(tok.encode(record["text"])), bool(record["text_b"])
    if not pair:
      return exp.config.data.truncation != "windows" and a + (2 if encoder else 1) > seq_len
    return a + len(tok.encode(record["text_b"])) + (3 if encoder else 2) > seq_len
  if kind == "tagging":  # sentences span rows; only a word longer than a row is cut
    budget = seq_len - (2 if encoder else 0)
    return any(len(p) > budget for p in task_examples.word_pieces(tok, record["tokens"]))
  length = generate.prompt_length(exp, exp.config.predict.max_new_tokens)
  if kind == "chat":
    return len(chat_examples.exp_format(exp).reply_prompt(record["messages"])) > length
  return len(tok.encode(record["input"])) + 1 > length  # + BOS (decoder) or EOS (T5)


def _summary(results: list[dict], output: str, exp, kind: str) -> str:
  """'wrote 8 predictions (one per input line) to FILE; 2 errors (lines 3, 5); 1 truncated'."""
  errors = [r["line"] for r in results if "error" in r]
  cut = sum(bool(r.get("truncated")) for r in results)
  line = f"wrote {len(results)} predictions (one per input line) to {output}"
  if errors:
    shown = ", ".join(map(str, errors[:10])) + (", ..." if len(errors) > 10 else "")
    line += f"; {len(errors)} lines could not be predicted (lines {shown}: see their 'error')"
  if cut:
    line += (f"; {cut} of {len(results) - len(errors)} inputs were longer than "
             f"train.seq_len={exp.config.train.seq_len} tokens and were cut ('truncated': true)")
    if (kind == "classification" and exp.config.data.truncation != "windows"
        and cut >= 0.1 * (len(results) - len(errors))):
      line += "; --config.data.truncation=windows reads all of a long text"
  return line


def run(exp, graphdef, params, step: int) -> str:
  """Predicts every line of ``predict.input`` into ``predict.output`` (one JSON line out per
  input line, in order, each with its line number); returns the output path."""
  if jax.process_count() > 1:
    raise ValueError("--mode=predict runs in one process; start it without --num_processes")
  kind = prediction_kind(exp)
  inputs = read_inputs(exp.config.predict.input, kind)
  output = exp.config.predict.output or os.path.join(exp.workdir, "predictions.jsonl")
  good = [i for i in inputs if i.record is not None]
  logging.info("Predicting %d inputs with the step-%d weights.", len(good), step)
  predicted = iter(predictions(exp, graphdef, params, [i.record for i in good], kind))
  results = [{"line": i.line, "error": i.error} if i.record is None else
             {"line": i.line, **next(predicted), "truncated": truncated(exp, kind, i.record)}
             for i in inputs]
  paths.write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
  writers.log_progress(_summary(results, output, exp, kind), True)
  return output
