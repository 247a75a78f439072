"""Token tagging: token accuracy, and entity-level precision / recall / F1 as seqeval's default
(conlleval-compatible, non-strict) mode computes them for IOB1/IOB2/IOBES tags.

Entities follow seqeval's ``get_entities``: an I-X with no X before it starts an entity, B-X
always starts one (so adjacent same-type entities stay apart), E-X and S-X close one, and 'O' or
a change of type ends one. A predicted entity counts only if its type, start and end all match
a gold one, so a wrong boundary is both a false positive and a false negative. Scores are
micro-averaged over all entities of all sentences, and 0 where their denominator is 0.

A tag with no B-/I-/E-/S- prefix (e.g. 'PER') is an entity of that whole type, and a run of the
same such tag is one entity, as in seqeval. Unlike seqeval, which reads the first character of
any tag as its prefix ('PER' becomes type 'ER', 'ORG' reads as outside), only 'O' is outside.
"""

from __future__ import annotations

from typing import Sequence

_PREFIXES = ("B", "I", "E", "S")
_ENTITY_PREFIXES = tuple(p + "-" for p in _PREFIXES)


def _split(tag: str) -> tuple[str, str | None]:
  """(prefix, type): ('O', None) for outside, ('', tag) for a tag without a prefix."""
  if tag == "O":
    return "O", None
  if tag in _PREFIXES:  # a bare B/I/E/S: seqeval's untyped entity '_'
    return tag, "_"
  if tag.startswith(_ENTITY_PREFIXES):
    return tag[0], tag[2:] or "_"
  return "", tag


def _ends(prev_prefix: str, prefix: str, prev_type: str | None, type_: str | None) -> bool:
  """Whether the entity that the previous tag is in ends before this tag (seqeval's rules)."""
  if prev_prefix in ("E", "S"):
    return True
  if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
    return True
  return prev_prefix != "O" and prev_type != type_


def _starts(prev_prefix: str, prefix: str, prev_type: str | None, type_: str | None) -> bool:
  """Whether this tag starts a new entity (seqeval's rules)."""
  if prefix in ("B", "S"):
    return True
  if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
    return True
  return prefix != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, start, end inclusive) of each entity in one sentence's tags, in order."""
  entities = []
  prev_prefix, prev_type, begin = "O", None, 0
  for i, tag in enumerate([*tags, "O"]):  # the trailing 'O' closes an entity at the end
    prefix, type_ = _split(tag)
    if _ends(prev_prefix, prefix, prev_type, type_):
      entities.append((prev_type, begin, i - 1))
    if _starts(prev_prefix, prefix, prev_type, type_):
      begin = i
    prev_prefix, prev_type = prefix, type_
  return entities


def _check(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
  """Raises ValueError unless gold and pred have the same sentences of the same lengths."""
  if len(gold) != len(pred):
    raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted; give one each.")
  for i, (g, p) in enumerate(zip(gold, pred)):
    if isinstance(g, str) or isinstance(p, str):
      raise ValueError(f"Sentence {i} is a string; give each sentence as a list of tags.")
    if len(g) != len(p):
      raise ValueError(f"Sentence {i} has {len(g)} gold tags but {len(p)} predicted.")


def _ratio(numerator: int, denominator: int) -> float:
  """numerator / denominator, 0 where the denominator is 0 (seqeval's zero_division)."""
  return numerator / denominator if denominator else 0.0


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
  """{'precision', 'recall', 'f1'} micro-averaged over entities, and 'per_type': {type:
  {'gold', 'predicted', 'correct'}} entity counts."""
  _check(gold, pred)
  gold_entities = {(s, *e) for s, tags in enumerate(gold) for e in get_entities(tags)}
  pred_entities = {(s, *e) for s, tags in enumerate(pred) for e in get_entities(tags)}
  correct = gold_entities & pred_entities
  per_type: dict[str, dict[str, int]] = {}
  for key, entities in (("gold", gold_entities), ("predicted", pred_entities),
                        ("correct", correct)):
    for entity in entities:
      counts = per_type.setdefault(entity[1], {"gold": 0, "predicted": 0, "correct": 0})
      counts[key] += 1
  precision = _ratio(len(correct), len(pred_entities))
  recall = _ratio(len(correct), len(gold_entities))
  return {"precision": precision, "recall": recall,
          "f1": _ratio(2 * precision * recall, precision + recall),
          "per_type": dict(sorted(per_type.items()))}


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
  """Fraction of tokens, over all sentences, whose predicted tag equals the gold one."""
  _check(gold, pred)
  total = sum(len(g) for g in gold)
  if total == 0:
    raise ValueError("No tokens to score: every sentence is empty.")
  return sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / total


def is_entity_tagging(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> bool:
  """Whether any gold or predicted tag has a B-/I-/E-/S- prefix, i.e. tags mark entity spans."""
  return any(tag.startswith(_ENTITY_PREFIXES) for tags in (*gold, *pred) for tag in tags)


def tag_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
  """{'token_accuracy'}, plus entity {'precision', 'recall', 'f1'} when the tags mark entity
  spans (IOB/IOBES); for other tag sets (POS: 'NN', 'VB') spans mean nothing, so only accuracy."""
  scores = {"token_accuracy": token_accuracy(gold, pred)}
  if is_entity_tagging(gold, pred):
    entities = entity_scores(gold, pred)
    scores.update({k: entities[k] for k in ("precision", "recall", "f1")})
  return scores
