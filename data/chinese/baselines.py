"""The baselines of data/chinese/README.md: character-bigram naive Bayes for the sentiment
split; the most frequent training tag of each character, a dictionary of the training
entities, and a window-feature perceptron tagger, for the NER split.

  python data/chinese/baselines.py
"""

import collections
import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from lm_research.data import formats  # noqa: E402
from lm_research.task_metrics import tagging  # noqa: E402


def bigrams(text):
  """Character bigrams of the text with start and end marks."""
  text = f"^{text}$"
  return [text[i:i + 2] for i in range(len(text) - 1)]


def naive_bayes(train, test):
  """Accuracy of a multinomial naive Bayes with add-one smoothing over character bigrams."""
  counts, prior = collections.defaultdict(collections.Counter), collections.Counter()
  for r in train:
    prior[r["label"]] += 1
    counts[r["label"]].update(bigrams(r["text"]))
  vocab = len(set().union(*counts.values()))
  totals = {label: sum(c.values()) + vocab for label, c in counts.items()}

  def score(text, label):
    return math.log(prior[label]) + sum(math.log((counts[label][g] + 1) / totals[label])
                                        for g in bigrams(text))
  right = sum(max(prior, key=lambda label: score(r["text"], label)) == r["label"] for r in test)
  return right / len(test)


def entity_dictionary(train, test, max_len=8, min_single=4):
  """Test tags from the training entities' strings, longest match first, each string tagged
  with its most frequent type; single characters only if seen as entities min_single times."""
  counts = collections.Counter()
  for s in train:
    for type_, start, end in tagging.get_entities(s["tags"]):
      counts["".join(s["tokens"][start:end + 1]), type_] += 1
  best = {}
  for (text, type_), n in counts.most_common():
    best.setdefault(text, (type_, n))  # most_common: the first type seen is the most frequent
  pred = []
  for s in test:
    chars, tags, i = "".join(s["tokens"]), ["O"] * len(s["tokens"]), 0
    while i < len(chars):
      for length in range(min(max_len, len(chars) - i), 0, -1):
        found = best.get(chars[i:i + length])
        if found and (length > 1 or found[1] >= min_single):
          tags[i:i + length] = [f"B-{found[0]}"] + [f"I-{found[0]}"] * (length - 1)
          i += length
          break
      else:
        i += 1
    pred.append(tags)
  return tagging.entity_scores([s["tags"] for s in test], pred)


def _window(chars, i, previous_tag):
  """A perceptron's features of character i: the characters within 2, bigrams, the last tag."""
  at = lambda k: chars[k] if 0 <= k < len(chars) else "#"  # noqa: E731
  return ["bias", *(f"c{k}={at(i + k)}" for k in (-2, -1, 0, 1, 2)),
          f"b-1={at(i - 1)}{at(i)}", f"b+1={at(i)}{at(i + 1)}", f"t-1={previous_tag}",
          f"t-1c={previous_tag}{at(i)}"]


def perceptron_tagger(train, test, epochs=8, seed=0):
  """Entity scores of a greedy left-to-right averaged perceptron over character windows: what
  local context alone gets, with no pretraining (about a minute)."""
  tags = sorted({t for s in train for t in s["tags"]})
  weights, totals, stamp, clock = (collections.defaultdict(float), collections.defaultdict(float),
                                   collections.defaultdict(int), 0)

  def best(features):
    return max(tags, key=lambda t: sum(weights[f, t] for f in features))

  def update(key, delta):  # lazy averaging: add the weight's value over the steps it held
    totals[key] += (clock - stamp[key]) * weights[key]
    stamp[key], weights[key] = clock, weights[key] + delta
  order = list(train)
  for epoch in range(epochs):
    random.Random(seed + epoch).shuffle(order)
    for s in order:
      previous = "<s>"
      for i, gold in enumerate(s["tags"]):
        clock += 1
        features = _window(s["tokens"], i, previous)
        guess = best(features)
        if guess != gold:
          for f in features:
            update((f, gold), 1.0)
            update((f, guess), -1.0)
        previous = gold
  for key in list(weights):
    update(key, 0.0)
    weights[key] = totals[key] / clock
  pred = []
  for s in test:
    previous, out = "<s>", []
    for i in range(len(s["tokens"])):
      previous = best(_window(s["tokens"], i, previous))
      out.append(previous)
    pred.append(out)
  return tagging.entity_scores([s["tags"] for s in test], pred)


def main():
  sentiment = os.path.join(HERE, "sentiment")
  train = list(formats.iter_records("classification", [os.path.join(sentiment, "train.tsv")]))
  test = list(formats.iter_records("classification", [os.path.join(sentiment, "test.tsv")]))
  majority = max(collections.Counter(r["label"] for r in test).values()) / len(test)
  print(f"sentiment: bigram naive Bayes {100 * naive_bayes(train, test):.2f}%, majority class "
        f"{100 * majority:.2f}% ({len(test)} test reviews)")
  ner = os.path.join(HERE, "ner")
  train = list(formats.iter_records("tagging", [os.path.join(ner, "train.conll")]))
  test = list(formats.iter_records("tagging", [os.path.join(ner, "test.conll")]))
  tags = collections.defaultdict(collections.Counter)
  for s in train:
    for ch, tag in zip(s["tokens"], s["tags"]):
      tags[ch][tag] += 1
  pred = [[tags[ch].most_common(1)[0][0] if ch in tags else "O" for ch in s["tokens"]]
          for s in test]
  scores = tagging.entity_scores([s["tags"] for s in test], pred)
  print(f"NER: most frequent tag per character, entity F1 {scores['f1']:.3f} (precision "
        f"{scores['precision']:.3f}, recall {scores['recall']:.3f}; {len(test)} test sentences)")
  scores = entity_dictionary(train, test)
  print(f"NER: the training entities as a dictionary, entity F1 {scores['f1']:.3f} (precision "
        f"{scores['precision']:.3f}, recall {scores['recall']:.3f})")
  scores = perceptron_tagger(train, test)
  print(f"NER: a perceptron over character windows, entity F1 {scores['f1']:.3f} (precision "
        f"{scores['precision']:.3f}, recall {scores['recall']:.3f})")


if __name__ == "__main__":
  main()
