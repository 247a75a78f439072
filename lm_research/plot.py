"""Training curves from ``metrics.jsonl`` and attention maps of a trained model, as PNG files.

  python -m lm_research.plot WORKDIR [WORKDIR ...] [--out=DIR]
      one figure per metric family (loss, accuracy, lr, throughput, other), every run on it
  python -m lm_research.plot WORKDIR --attention --sentence="To be, or not to be"
      [--config=configs/NAME.py] [--tokenizer=PATH]
      a grid of layers x heads: how much each token (row) attends to each earlier one (column)

The default ``--out`` is WORKDIR/plots (the runs' common parent/plots for several runs).
Each written path is printed, one per line.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lm_research import paths  # noqa: E402

FAMILIES = ("loss", "accuracy", "lr", "throughput", "other")
_ACCURACY_WORDS = ("accuracy", "f1", "exact_match", "precision", "recall", "bleu", "rouge")


def metric_family(key: str) -> str:
  """Which figure a metric key belongs on: loss, accuracy, lr, throughput or other."""
  name = key.split("/")[-1]
  if key.startswith("perf/"):
    return "throughput"
  if "loss" in name or name == "perplexity":
    return "loss"
  if any(word in name for word in _ACCURACY_WORDS):
    return "accuracy"
  if name in ("learning_rate", "lr"):
    return "lr"
  return "other"


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{metric key: (steps, values)} from WORKDIR/metrics.jsonl; a re-logged step keeps its last."""
  path = paths.as_path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise ValueError(f"{workdir} has no metrics.jsonl; give the --workdir of a training run.")
  series: dict[str, dict[int, float]] = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record.pop("step"))
    except (ValueError, KeyError, TypeError):
      raise ValueError(f"{path} line {number} is not a JSON object with a 'step'.") from None
    for key, value in record.items():
      if isinstance(value, (int, float)) or value is None:  # null = a non-finite value
        series.setdefault(key, {})[step] = math.nan if value is None else float(value)
  return {key: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
          for key, points in series.items()}


def run_labels(workdirs: Sequence[str]) -> list[str]:
  """Legend names: each workdir's folder name, or its path below their common parent on a clash."""
  resolved = [paths.resolve(w) for w in workdirs]
  names = [os.path.basename(p) for p in resolved]
  if len(set(names)) == len(names):
    return names
  common = _common_parent(resolved)
  return [p[len(common):].lstrip("/") or p for p in resolved]


def default_out(workdirs: Sequence[str]) -> str:
  """WORKDIR/plots for one run; the runs' common parent/plots for several."""
  resolved = [paths.resolve(w) for w in workdirs]
  base = resolved[0] if len(resolved) == 1 else _common_parent(resolved)
  if not base:
    raise ValueError("The workdirs share no folder to hold plots/; give --out.")
  return os.path.join(base, "plots")


def _common_parent(resolved: Sequence[str]) -> str:
  """The longest common folder of absolute paths or URIs (os.path.commonpath would turn
  'gs://b' into 'gs:/b'); '' for URIs in different buckets."""
  parts = [p.split("/") for p in resolved]
  common = []
  for names in zip(*parts):
    if len(set(names)) > 1:
      break
    common.append(names[0])
  joined = "/".join(common)
  if paths.is_remote(resolved[0]):
    return joined if len(common) > 2 else ""  # ['gs:', ''] alone: no common bucket
  return joined or "/"


def plot_curves(workdirs: Sequence[str], out: str) -> list[str]:
  """One PNG per metric family with every run's curves on it; returns the paths written."""
  if not workdirs:
    raise ValueError("Give at least one WORKDIR holding a metrics.jsonl.")
  runs = [read_metrics(w) for w in workdirs]
  labels = run_labels(workdirs)
  written = []
  for family in FAMILIES:
    keys = sorted({k for run in runs for k in run if metric_family(k) == family},
                  key=lambda k: (not k.startswith("train/"), k))
    if not keys:
      continue
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
      for run, label in zip(runs, labels):
        if key in run:
          steps, values = run[key]
          # Sparse series (evaluations) get markers so a single point still shows.
          ax.plot(steps, values, label=label, marker="o" if len(steps) < 30 else None,
                  markersize=3)
      ax.set_title(key)
      ax.set_xlabel("step")
      if family in ("loss", "lr") and _all_positive(runs, key):
        ax.set_yscale("log")
      ax.grid(alpha=0.3)
      ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys):]:
      ax.set_visible(False)
    fig.tight_layout()
    path = paths.save_figure(fig, os.path.join(out, f"{family}.png"), dpi=100)
    plt.close(fig)
    written.append(path)
  if not written:
    raise ValueError(f"No metrics to plot in {', '.join(workdirs)} (metrics.jsonl is empty).")
  return written


def _all_positive(runs, key) -> bool:
  values = np.concatenate([run[key][1] for run in runs if key in run])
  values = values[np.isfinite(values)]
  return values.size > 0 and bool(np.all(values > 0)) and values.max() / values.min() > 20


# ----------------------------------------------------------------------------- attention maps


def attention_maps(model, ids: Sequence[int]) -> np.ndarray:
  """(L, N, T, T) self-attention weights of each layer and head for one token sequence (an
  encoder-decoder's encoder layers), as the attention modules sow them (models/attention.py).
  Runs eagerly: the model must not scan its layers."""
  import jax.numpy as jnp  # noqa: PLC0415  (JAX only when drawing attention)
  from flax import nnx  # noqa: PLC0415

  from lm_research.models.attention import Attention  # noqa: PLC0415
  # Self-attention only: the modules named 'attn' (cross-attention is 'cross_attn').
  recorders = [m for path, m in nnx.iter_graph(model)
               if isinstance(m, Attention) and path and path[-1] == "attn"]
  ids_1T = jnp.asarray([list(ids)], jnp.int32)
  run = (lambda m: m.encode(ids_1T)) if model.cfg.family == "encoder_decoder" else (
      lambda m: m(ids_1T))
  for m in recorders:
    m.record_weights = True
  try:
    _, sown = nnx.capture(run, nnx.Intermediate)(model)
  finally:
    for m in recorders:
      m.record_weights = False
  # One (weights,) tuple per layer, under paths that differ only in the layer index.
  sown_by_path = dict(nnx.to_flat_state(sown))
  layer_order = sorted(sown_by_path, key=lambda path: [str(x).zfill(6) for x in path])
  return np.stack([np.asarray(sown_by_path[path].get_value()[0][0]) for path in layer_order])


def _model_config_dict(workdir: str, config) -> dict:
  """The run's resolved config: --config if given, else WORKDIR/config.json, else the one saved
  with its latest checkpoint."""
  from lm_research import checkpointing  # noqa: PLC0415  (Orbax only when reading a checkpoint)
  if config is not None:
    return config.to_dict()
  path = paths.as_path(workdir) / "config.json"
  if path.is_file():
    return json.loads(path.read_text())
  try:
    return checkpointing.read_config(workdir)
  except ValueError:
    raise ValueError(f"{workdir} has no config.json and no checkpoint; train there first or "
                     "pass --config=configs/NAME.py.") from None


def load_trained_model(workdir: str, config=None):
  """(model, config dict) of WORKDIR's latest checkpoint, rebuilt without layer scanning so
  that it runs eagerly for inspection."""
  c = _model_config_dict(workdir, config)
  return _restore(workdir, _inspection_config(c)), c


def _inspection_config(c: dict):
  """The run's ModelConfig (with its LoRA adapters, if it trained some), with layers looped
  (not scanned) so each runs eagerly."""
  from lm_research.models import ModelConfig  # noqa: PLC0415
  from lm_research.models.config import LoRAConfig  # noqa: PLC0415
  try:
    return ModelConfig.from_dict(c["model"]).replace(
        lora=LoRAConfig(**c.get("train", {}).get("lora", {})), scan_layers=False, remat="none")
  except (KeyError, TypeError) as e:
    raise ValueError(f"The run's config has no complete model block ({e}).") from None


def _restore(workdir: str, model_cfg):
  """The model with WORKDIR's latest parameters, built from shapes alone (no random init)."""
  from flax import nnx  # noqa: PLC0415

  from lm_research import pretrained  # noqa: PLC0415  (Orbax only when reading a checkpoint)
  from lm_research.models import build_model, layout  # noqa: PLC0415
  model = nnx.eval_shape(lambda: build_model(model_cfg, 0))  # shapes only: no random init
  # A LoRA run's checkpoint holds its adapters; checkpoint_params adds its base from init_from.
  layout.set_params(model, pretrained.checkpoint_params(workdir))
  return model


def plot_attention(workdir: str, sentence: str, out: str, config=None,
                   tokenizer_path: str = "") -> str:
  """Draws the layers x heads attention grid of WORKDIR's model on ``sentence``; returns the PNG."""
  from lm_research.data.tokenizer import load_tokenizer  # noqa: PLC0415
  if not sentence.strip():
    raise ValueError("--sentence is empty; give the text whose attention to draw.")
  c = _model_config_dict(workdir, config)
  cfg = _inspection_config(c)
  if not (paths.as_path(workdir) / "checkpoints").is_dir():
    raise ValueError(f"{workdir} has no checkpoints/ to draw attention from; train there first.")
  tokenizer_path = tokenizer_path or c["data"].get("tokenizer_path") or os.path.join(
      workdir, "tokenizer.model")
  tok = load_tokenizer(tokenizer_path, cfg.family)
  ids = tok.encode(sentence)
  if cfg.family == "encoder":
    ids = [tok.cls_id] + ids + [tok.sep_id]
  elif cfg.family == "encoder_decoder":
    ids = ids + [tok.eos_id]
  if cfg.position == "learned" and len(ids) > cfg.max_len:
    raise ValueError(f"The sentence is {len(ids)} tokens, more than model.max_len={cfg.max_len}; "
                     "give a shorter one.")
  if max(ids) >= cfg.vocab_size:
    raise ValueError(f"Tokenizer {tokenizer_path} gives id {max(ids)} but model.vocab_size="
                     f"{cfg.vocab_size}; pass the run's own tokenizer with --tokenizer.")
  maps = attention_maps(_restore(workdir, cfg), ids)
  pieces = [tok.id_to_piece(i) for i in ids]
  path = os.path.join(out, f"attention_{paths.as_path(workdir).name}.png")
  _draw_attention_grid(maps, pieces, path, title=f"{os.path.basename(workdir)}: {sentence!r}")
  return path


def _draw_attention_grid(maps_LNTS: np.ndarray, pieces: Sequence[str], path: str,
                         title: str) -> None:
  """Row = layer, column = head; each panel is query token (y) x key token (x)."""
  layers, heads = maps_LNTS.shape[:2]
  size = 2.2 + 0.12 * len(pieces)
  fig, axes = plt.subplots(layers, heads, figsize=(size * heads, size * layers), squeeze=False)
  labelled = len(pieces) <= 40  # beyond that, tick labels are unreadable
  for layer in range(layers):
    for head in range(heads):
      ax = axes[layer, head]
      ax.imshow(maps_LNTS[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
      ax.set_title(f"layer {layer} head {head}", fontsize="small")
      if labelled:
        ax.set_xticks(range(len(pieces)), pieces, rotation=90, fontsize=6)
        ax.set_yticks(range(len(pieces)), pieces, fontsize=6)
      else:
        ax.set_xticks([])
        ax.set_yticks([])
  fig.suptitle(title)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _parse(argv: Sequence[str]):
  """(flag values, workdirs): flags live in their own FlagValues, so importing this module
  never clashes with lm_research.main's --config."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  fv = flags.FlagValues()
  flags.DEFINE_string("out", "", "Folder for the PNGs; '' = WORKDIR/plots.", flag_values=fv)
  flags.DEFINE_bool("attention", False, "Draw attention maps instead of curves.", flag_values=fv)
  flags.DEFINE_string("sentence", "The quick brown fox jumps over the lazy dog.",
                      "Text whose attention to draw (--attention).", flag_values=fv)
  flags.DEFINE_string("tokenizer", "", "Tokenizer file; '' = the run's (WORKDIR/tokenizer.model).",
                      flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "The run's config file, if the workdir lacks "
                                  "config.json (--attention).", flag_values=fv,
                                  sys_argv=list(argv))
  try:
    workdirs = fv(list(argv))[1:]
  except flags.Error as e:
    raise ValueError(str(e).splitlines()[-1]) from None
  if not workdirs:
    raise ValueError("usage: python -m lm_research.plot WORKDIR [WORKDIR ...] [--out=DIR] "
                     "[--attention --sentence=TEXT [--config=configs/NAME.py] [--tokenizer=PATH]]")
  return fv, workdirs


def main(argv: Sequence[str]) -> list[str]:
  """CLI: curves of every WORKDIR, or with --attention each run's attention grid; prints paths."""
  fv, workdirs = _parse(argv)
  out = fv.out or default_out(workdirs)
  if fv.attention:
    written = [plot_attention(w, fv.sentence, out, fv.config, fv.tokenizer) for w in workdirs]
  else:
    written = plot_curves(workdirs, out)
  for path in written:
    print(path)
  return written


if __name__ == "__main__":
  try:
    main(sys.argv)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
