"""Rebuilds data/chat (Shakespeare quiz conversations) from data/shakespeare/train; see README.md.

  python data/chat/make_data.py

Deterministic: the same files come out every time.
"""

import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYS_DIR = os.path.join(HERE, "..", "shakespeare", "train")
# The plays whose speakers are full upper-case names ("LADY MACBETH.") and their titles.
PLAYS = {"as_you_like_it": "As You Like It", "julius_caesar": "Julius Caesar",
         "macbeth": "Macbeth", "merchant_of_venice": "The Merchant of Venice",
         "much_ado_about_nothing": "Much Ado About Nothing", "othello": "Othello",
         "tempest": "The Tempest", "twelfth_night": "Twelfth Night"}
SPEAKERS_PER_PLAY = 4  # each play's most frequent speakers
TRAIN_PER_PLAY, TEST_PER_PLAY = 50, 6
SYSTEM = "You answer questions about Shakespeare's plays."
_SPEAKER = re.compile(r"^([A-Z][A-Z' -]+)\.$")


def speeches(path):
  """(speaker, first line) of each speech: a block whose first line is 'NAME.'"""
  with open(path, encoding="utf-8") as f:
    blocks = f.read().split("\n\n")
  for block in blocks:
    lines = [line.strip() for line in block.strip().split("\n")]
    m = _SPEAKER.match(lines[0]) if len(lines) > 1 else None
    text = re.sub(r"\[.*?\]", "", lines[1]).strip() if m else ""
    if m and len(text.split()) >= 4:
      yield m.group(1).title().replace("'S", "'s"), text


def conversation(speaker, line, title, two_turns):
  """Who says the line, and (in half of them) which play it is from."""
  messages = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": f'Who says this line? "{line}"'},
              {"role": "assistant", "content": f"{speaker}."}]
  if two_turns:
    messages += [{"role": "user", "content": "Which play is it from?"},
                 {"role": "assistant", "content": f"{title}."}]
  return {"messages": messages}


def main():
  rng = random.Random(0)
  train, test = [], []
  for name, title in PLAYS.items():
    found = list(speeches(os.path.join(PLAYS_DIR, f"{name}.txt")))
    counts = {}
    for speaker, _ in found:
      counts[speaker] = counts.get(speaker, 0) + 1
    top = sorted(counts, key=lambda s: (-counts[s], s))[:SPEAKERS_PER_PLAY]
    chosen = rng.sample([s for s in found if s[0] in top], TRAIN_PER_PLAY + TEST_PER_PLAY)
    for i, (speaker, line) in enumerate(chosen):
      rows = test if i < TEST_PER_PLAY else train
      rows.append(conversation(speaker, line, title, two_turns=rng.random() < 0.5))
  rng.shuffle(train)
  rng.shuffle(test)
  for split, rows in (("train", train), ("test", test)):
    with open(os.path.join(HERE, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{split}.jsonl: {len(rows)} conversations")


if __name__ == "__main__":
  main()
