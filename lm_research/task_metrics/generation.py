"""Text generation: exact match, corpus BLEU and ROUGE-L of predictions against one reference each.

Scales: exact match and ROUGE-L are fractions in [0, 1]; BLEU is 0-100, as sacrebleu reports it
and as papers quote it.
"""

from __future__ import annotations

from typing import Sequence

import sacrebleu


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
  """Raises ValueError unless there is one reference string per prediction, and at least one."""
  if isinstance(predictions, str) or isinstance(references, str):
    raise ValueError("Give predictions and references as lists of strings, not one string.")
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references; "
                     "give one reference each.")
  if not predictions:
    raise ValueError("No predictions to score.")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
  _check(predictions, references)
  return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU, 0-100: sacrebleu's defaults (13a tokenizer, exp smoothing, case-sensitive)."""
  _check(predictions, references)
  return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Mean over examples of the ROUGE-L F-measure, in [0, 1] (Google's rouge-score: lowercased,
  non-alphanumerics dropped, no stemming)."""
  _check(predictions, references)
  # Imported here: rouge_score pulls in nltk, about a second of import time.
  from rouge_score import rouge_scorer  # noqa: PLC0415
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  total = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))
  return total / len(predictions)


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """{'exact_match', 'bleu', 'rouge_l'} of the predictions against their references."""
  return {"exact_match": exact_match(predictions, references),
          "bleu": bleu(predictions, references),
          "rouge_l": rouge_l(predictions, references)}
