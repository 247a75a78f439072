"""One fine-tune, two ways: ``python -m lm_research.main`` vs transformers + PyTorch, side by side.

  python -m bench.compare_finetune --workdir=/tmp/ft_bench
  python -m bench.compare_finetune --workdir=/tmp/ft_bench --body=PATH/TO/all-MiniLM-L6-v2 \\
      --train=train.jsonl --eval=dev.jsonl

Ours is the README's one command (configs/finetune_classification.py with init_from, epochs,
batch and row length), timed from start to exit: data preparation, compilation and evaluation
included. Theirs is the loop a transformers user writes: the folder's tokenizer with
truncation, dynamic padding to the longest row of each shuffled batch (DataCollatorWithPadding),
AdamW at --torch_lr with linear warm-up (10%) and decay, the same epochs, batch and maximum
length, then one evaluation. Both print wall time, steps/s, real (unpadded) training tokens/s
and eval accuracy.

Without --body, a MiniLM-L6-shaped BERT (6 layers, width 384, 12 heads, 30,522-piece WordPiece
vocabulary) with random weights stands in for all-MiniLM-L6-v2 (no model hub here); without
--train/--eval, 3,200/800 short texts cut from the bundled SpamAssassin e-mails (spam vs ham, a
median of ~20 pieces) stand in for movie-review sentences. PyTorch and transformers are test
extras (requirements-test.txt).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/finetune_bench", "where data, body and runs go")
_BODY = flags.DEFINE_string("body", "", "a Hugging Face BERT folder; '' = random MiniLM-L6 shape")
_TRAIN = flags.DEFINE_string("train", "", "training JSONL {text, label}; '' = bundled stand-in")
_EVAL = flags.DEFINE_string("eval", "", "eval JSONL {text, label}; '' = bundled stand-in")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "passes over the training set")
_BATCH = flags.DEFINE_integer("batch_size", 32, "examples per step")
_MAX_LEN = flags.DEFINE_integer("max_len", 128, "tokens per example at most")
_TORCH_LR = flags.DEFINE_float("torch_lr", 5e-5, "PyTorch's AdamW peak rate")
_OURS_ARGS = flags.DEFINE_list("ours_args", [], "more --config.* flags for our run")
_SKIP = flags.DEFINE_list("skip", [], "'ours' and/or 'torch' to leave out")

BUNDLED = "data/spamassassin/train.jsonl"
MINILM_L6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512, vocab_size=30522)


def stand_in_data(folder: str) -> tuple[str, str]:
  """3,200 + 800 short texts (4-30 words from the start of bundled e-mails; words of letters and
  punctuation only, so no URL becomes dozens of pieces) with their spam/ham labels."""
  rng = random.Random(0)
  with open(BUNDLED) as f:
    mails = [json.loads(line) for line in f]
  rng.shuffle(mails)
  rows = []
  for mail in mails[:4000]:
    words = [w for w in mail["text"].split() if len(w) <= 15 and w.strip(".,;:!?'\"()").isalpha()]
    rows.append({"text": " ".join(words[:rng.randint(4, 30)]), "label": mail["label"]})
  paths = []
  for name, part in (("train.jsonl", rows[:3200]), ("eval.jsonl", rows[3200:])):
    paths.append(os.path.join(folder, name))
    with open(paths[-1], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)
  return paths[0], paths[1]


def stand_in_body(folder: str, train_path: str) -> str:
  """A random-weight BertModel of MiniLM-L6's shape with a WordPiece vocab.txt trained on the
  training texts (filled up to 30,522 entries with [unused] pieces, as BERT's own)."""
  import tokenizers  # noqa: PLC0415  (optional extras)
  import transformers  # noqa: PLC0415
  with open(train_path) as f:
    texts = [json.loads(line)["text"] for line in f]
  wordpiece = tokenizers.implementations.BertWordPieceTokenizer(lowercase=True)
  wordpiece.train_from_iterator(texts, vocab_size=8000)
  vocab = sorted(wordpiece.get_vocab(), key=wordpiece.get_vocab().get)
  vocab += [f"[unused{i}]" for i in range(MINILM_L6["vocab_size"] - len(vocab))]
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
  transformers.set_seed(0)
  transformers.BertModel(transformers.BertConfig(**MINILM_L6)).save_pretrained(
      folder, safe_serialization=True)
  return folder


def real_tokens(body: str, path: str, max_len: int) -> tuple[list[str], list[str], int]:
  """(texts, labels, real tokens of one pass) with the body's tokenizer, truncated."""
  import transformers  # noqa: PLC0415
  tok = transformers.BertTokenizerFast.from_pretrained(body)
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
  lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
  return texts, labels, sum(lengths)


def run_ours(body: str, train: str, evaluation: str, workdir: str) -> dict:
  """Our one command, timed end to end; its final eval row."""
  run = os.path.join(workdir, "ours")
  command = [sys.executable, "-m", "lm_research.main",
             "--config=configs/finetune_classification.py", f"--workdir={run}",
             f"--config.init_from={body}", f"--config.data.train_path={train}",
             f"--config.data.eval_path={evaluation}", f"--config.train.epochs={_EPOCHS.value}",
             "--config.train.steps=0", f"--config.train.batch_size={_BATCH.value}",
             f"--config.train.seq_len={_MAX_LEN.value}", *_OURS_ARGS.value]
  print("ours:", " ".join(command), flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  wall = time.perf_counter() - start
  with open(os.path.join(run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  last = [r for r in rows if "eval/accuracy" in r][-1]
  return {"wall_s": wall, "steps": last["step"], "accuracy": last["eval/accuracy"]}


def run_torch(body: str, train: str, evaluation: str) -> dict:
  """The transformers + PyTorch fine-tune with dynamic padding, timed end to end."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  start = time.perf_counter()
  torch.manual_seed(0)
  tok = transformers.BertTokenizerFast.from_pretrained(body)
  texts, labels, _ = real_tokens(body, train, _MAX_LEN.value)
  names = sorted(set(labels))
  encoded = tok(texts, truncation=True, max_length=_MAX_LEN.value)
  examples = [{"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
               "labels": names.index(y)} for ids, types, mask, y in
              zip(encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"],
                  labels)]
  collate = transformers.DataCollatorWithPadding(tok)
  loader = torch.utils.data.DataLoader(examples, batch_size=_BATCH.value, shuffle=True,
                                       collate_fn=collate)
  model = transformers.BertForSequenceClassification.from_pretrained(body, num_labels=len(names))
  steps = _EPOCHS.value * len(loader)
  optimizer = torch.optim.AdamW(model.parameters(), lr=_TORCH_LR.value, weight_decay=0.01)
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
  model.train()
  for _ in range(_EPOCHS.value):
    for batch in loader:
      loss = model(**batch).loss
      loss.backward()
      optimizer.step()
      schedule.step()
      optimizer.zero_grad()
  model.eval()
  eval_texts, eval_labels, _ = real_tokens(body, evaluation, _MAX_LEN.value)
  correct = 0
  with torch.no_grad():
    for i in range(0, len(eval_texts), 64):
      batch = tok(eval_texts[i:i + 64], truncation=True, max_length=_MAX_LEN.value,
                  padding=True, return_tensors="pt")
      predicted = model(**batch).logits.argmax(-1).tolist()
      correct += sum(names[p] == y for p, y in zip(predicted, eval_labels[i:i + 64]))
  return {"wall_s": time.perf_counter() - start, "steps": steps,
          "accuracy": correct / len(eval_texts)}


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  train, evaluation = _TRAIN.value, _EVAL.value
  if not train:
    train, evaluation = stand_in_data(_WORKDIR.value)
  body = _BODY.value or stand_in_body(os.path.join(_WORKDIR.value, "body"), train)
  _, _, tokens = real_tokens(body, train, _MAX_LEN.value)
  results = {}
  if "ours" not in _SKIP.value:
    results["lm_research"] = run_ours(body, train, evaluation, _WORKDIR.value)
  if "torch" not in _SKIP.value:
    results["transformers+torch"] = run_torch(body, train, evaluation)
  print(f"\n{_EPOCHS.value} epochs, batch {_BATCH.value}, rows up to {_MAX_LEN.value} tokens, "
        f"{tokens} real training tokens a pass")
  print(f"{'':20s} {'wall s':>8s} {'steps':>6s} {'steps/s':>8s} {'real tok/s':>11s} "
        f"{'accuracy':>9s}")
  for name, r in results.items():
    print(f"{name:20s} {r['wall_s']:8.1f} {r['steps']:6d} {r['steps'] / r['wall_s']:8.2f} "
          f"{tokens * _EPOCHS.value / r['wall_s']:11.0f} {r['accuracy']:9.4f}")
  if len(results) == 2:
    ours, theirs = results.values()
    print(f"ours / theirs wall time: {ours['wall_s'] / theirs['wall_s']:.2f}")


if __name__ == "__main__":
  app.run(main)
