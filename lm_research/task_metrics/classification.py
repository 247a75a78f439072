"""Sequence classification: confusion matrix, accuracy and macro precision / recall / F1, and a
PNG of the confusion matrix.

Macro averages follow ``sklearn.metrics.precision_recall_fscore_support(gold, pred,
labels=range(num_labels), average="macro", zero_division=0)``: every one of the ``num_labels``
classes counts, so a class absent from both gold and predictions scores 0 and lowers the
averages (sklearn without ``labels=`` would skip it; a fixed label set keeps scores comparable
across evaluation sets). A class never predicted has precision 0, one never in gold recall 0.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lm_research import paths  # noqa: E402


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> np.ndarray:
  """(num_labels, num_labels) int64 counts: row = gold label, column = predicted label."""
  gold = np.asarray(gold, np.int64).reshape(-1)
  pred = np.asarray(pred, np.int64).reshape(-1)
  if gold.shape != pred.shape:
    raise ValueError(f"{gold.size} gold labels but {pred.size} predictions; give one each.")
  for name, labels in (("gold", gold), ("predicted", pred)):
    outside = labels[(labels < 0) | (labels >= num_labels)]
    if outside.size:
      raise ValueError(f"{name} label {outside[0]} is outside [0, {num_labels}).")
  counts = np.bincount(gold * num_labels + pred, minlength=num_labels * num_labels)
  return counts.reshape(num_labels, num_labels)


def classification_scores(confusion: np.ndarray) -> dict[str, float]:
  """{'accuracy', 'precision', 'recall', 'f1'}; the last three are macro averages over all
  classes, as sklearn's average='macro', zero_division=0 with every label given."""
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"The confusion matrix must be square, not of shape {confusion.shape}.")
  total = confusion.sum()
  if total == 0:
    raise ValueError("The confusion matrix is empty: no examples to score.")
  tp = np.diag(confusion)
  predicted = confusion.sum(axis=0)
  gold = confusion.sum(axis=1)
  precision = _divide(tp, predicted)
  recall = _divide(tp, gold)
  # 2tp / (2tp + fp + fn) is the harmonic mean of P and R, and 0 rather than NaN where both are 0.
  f1 = _divide(2 * tp, predicted + gold)
  return {"accuracy": float(tp.sum() / total), "precision": float(precision.mean()),
          "recall": float(recall.mean()), "f1": float(f1.mean())}


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
  return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                   where=denominator > 0)


def save_confusion_matrix(confusion: np.ndarray, label_names: Sequence[str], path: str) -> str:
  """Writes the confusion matrix as a PNG (gold rows, predicted columns, counts in the cells);
  returns the path."""
  confusion = np.asarray(confusion)
  n = len(label_names)
  if n == 0 or confusion.shape != (n, n):
    raise ValueError(f"The confusion matrix is {confusion.shape} but there are {n} label names.")
  # Integer counts in full; anything else (e.g. row-normalised rates) to 3 significant digits.
  exact = np.issubdtype(confusion.dtype, np.integer)
  texts = [[str(c) if exact else f"{c:.3g}" for c in row] for row in confusion.tolist()]
  # Cells stay ~0.35 inch wide so that 2 to ~50 labels, and their counts, remain legible.
  side = max(4.0, 0.35 * n + 2.5)
  fontsize = min(10.0, max(6.0, 300.0 / n))
  # The axes get ~1.5 inch less than the figure; a digit is ~0.6 of the font size, so long
  # counts in narrow cells get smaller type.
  cell_points = 72.0 * (side - 1.5) / n
  cell_fontsize = min(fontsize, 1.3 * cell_points / max(len(t) for row in texts for t in row))
  fig, ax = plt.subplots(figsize=(side, side))
  image = ax.imshow(confusion, cmap="Blues", vmin=0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  threshold = confusion.max() / 2
  for gold in range(n):
    for pred in range(n):
      # White text on dark cells, black on light ones.
      ax.text(pred, gold, texts[gold][pred], ha="center", va="center", fontsize=cell_fontsize,
              color="white" if confusion[gold, pred] > threshold else "black")
  ax.set_xticks(range(n), label_names, rotation=90, fontsize=fontsize)
  ax.set_yticks(range(n), label_names, fontsize=fontsize)
  ax.set_xlabel("predicted")
  ax.set_ylabel("gold")
  ax.set_title("confusion matrix")
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)  # the workdir may be remote (gs://...)
  plt.close(fig)
  return path
