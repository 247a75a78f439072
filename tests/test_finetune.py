"""Fine-tuning end to end: learnable toy tasks through the real loop, eval metrics, predict, and
the one-line errors for bad task data. Bodies: fresh encoder/decoder, and a Hugging Face BERT
folder (random weights, its own WordPiece vocab.txt) loaded through init_from."""

import json
import random

import numpy as np
import pytest

from configs import finetune_causal_lm, finetune_classification, finetune_seq2seq, finetune_tagging
from lm_research import checkpointing, pretrained, train

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

WORDS = "the a of river stone light house garden window paper music city summer".split()
CUES = {"positive": ["great", "lovely"], "negative": ["awful", "dreadful"],
        "neutral": ["okay", "average"]}
NAMES = [("anna", "smith"), ("bob", "jones"), ("carl", "brown")]
TINY = dict(vocab_size=320, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_len=32,
            dropout_rate=0.0)
TINY_T5 = dict(TINY, vocab_size=512, num_decoder_layers=2, head_dim=16)  # + 100 sentinels


def sentiment_rows(n, seed):
  """Sentences of filler words with one cue word that decides the label."""
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    label = rng.choice(sorted(CUES))
    words = rng.sample(WORDS, 3)
    words.insert(rng.randrange(4), rng.choice(CUES[label]))
    rows.append({"text": " ".join(words), "label": label})
  return rows


def ner_sentences(n, seed):
  """Filler words with a two-word name tagged B-PER I-PER somewhere in each sentence."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    words = rng.sample(WORDS, 4)
    at = rng.randrange(5)
    first, last = rng.choice(NAMES)
    out.append((words[:at] + [first, last] + words[at:],
                ["O"] * at + ["B-PER", "I-PER"] + ["O"] * (4 - at)))
  return out


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def write_conll(path, sentences):
  path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(*s)) + "\n" for s in sentences))
  return str(path)


def task_config(module, train_path, eval_path, arg="", **train_overrides):
  c = module.get_config(arg)
  c.init_from = ""
  c.model.update(TINY)
  c.data.train_path, c.data.eval_path = train_path, eval_path
  c.train.update(dict(dict(epochs=0.0, steps=150, batch_size=16, seq_len=16, learning_rate=1e-3,
                           warmup_ratio=0.0, warmup_steps=5), **train_overrides))
  c.eval.every_steps = c.train.steps
  c.checkpoint.every_steps = 0
  c.wandb.mode = "disabled"
  return c


@pytest.mark.parametrize("body", ["hf_bert", "decoder"])
def test_three_class_classification_learns_and_predicts(tmp_path, body, request):
  """An encoder loaded from a Hugging Face folder ([CLS] pooler), and a fresh GPT (last token)."""
  train_path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(400, 0))
  eval_rows = sentiment_rows(48, 1)
  eval_path = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
  c = task_config(finetune_classification, train_path, eval_path,
                  "decoder" if body == "decoder" else "")
  if body == "hf_bert":
    c.init_from = request.getfixturevalue("bert_folder")
    # 4-word texts in rows of [CLS] + 3 pieces + [SEP]: two windows each, averaged in eval
    # and predict, so a cue word in either window decides the label
    c.data.truncation, c.train.seq_len = "windows", 5
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(c, workdir)
  if body == "hf_bert":  # architecture and vocab.txt came from the folder, into the saved config
    model = checkpointing.read_config(workdir)["model"]
    assert (model["family"], model["vocab_size"]) == ("encoder", 30)
    assert c.model.vocab_size == 320  # the caller's config is left as it was
  assert metrics["eval/accuracy"] >= 0.9 and metrics["eval/f1"] >= 0.9
  assert metrics["eval/examples"] == 48  # the whole eval set: texts, not windows or padding
  logged = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  assert logged[0]["eval/accuracy"] < 0.7 < logged[-1]["eval/accuracy"]  # untrained vs trained
  assert (tmp_path / "run" / "plots" / "confusion_matrix.png").stat().st_size > 0
  assert json.load(open(f"{workdir}/labels.json"))["labels"] == ["negative", "neutral",
                                                                  "positive"]
  if body == "decoder":
    return
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("".join(r["text"] + "\n" for r in eval_rows))
  c.predict.input, c.predict.output = str(inputs), str(tmp_path / "out.jsonl")
  train.predict_only(c, workdir)
  out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [o["text"] for o in out] == [r["text"] for r in eval_rows]
  for o in out:
    assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)
  agree = np.mean([o["label"] == r["label"] for o, r in zip(out, eval_rows)])
  assert agree == pytest.approx(metrics["eval/accuracy"])  # predict == eval on the same texts


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
  """A random tiny BertForMaskedLM saved with a WordPiece vocab of the toy words."""
  transformers = pytest.importorskip("transformers")
  folder = tmp_path_factory.mktemp("hf_bert")
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  vocab = specials + sorted(set(WORDS) | {w for n in NAMES for w in n}
                            | {w for c in CUES.values() for w in c})
  (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=32)
  transformers.BertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
  return str(folder)


def test_tagging_from_a_hugging_face_bert_folder(tmp_path, bert_folder):
  train_path = write_conll(tmp_path / "train.conll", ner_sentences(300, 0))
  eval_sentences = ner_sentences(40, 1)
  eval_path = write_conll(tmp_path / "eval.conll", eval_sentences)
  c = task_config(finetune_tagging, train_path, eval_path)
  c.init_from = bert_folder  # architecture and vocab.txt come from the folder
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(c, workdir)
  assert metrics["eval/token_accuracy"] >= 0.95
  assert metrics["eval/f1"] >= 0.9  # entity level: both words of the name, right type
  assert json.load(open(f"{workdir}/labels.json"))[
      "labels"] == ["B-PER", "I-PER", "O"]
  inputs = tmp_path / "inputs.jsonl"
  inputs.write_text("".join(json.dumps({"tokens": s[0]}) + "\n" for s in eval_sentences))
  c.predict.input, c.predict.output = str(inputs), str(tmp_path / "out.jsonl")
  train.predict_only(c, workdir)
  out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [len(o["tags"]) for o in out] == [len(s[0]) for s in eval_sentences]
  correct = sum(p == g for o, s in zip(out, eval_sentences) for p, g in zip(o["tags"], s[1]))
  assert correct / sum(len(s[1]) for s in eval_sentences) == pytest.approx(
      metrics["eval/token_accuracy"])


def test_body_fields_come_from_the_folder_and_run_fields_from_the_config(bert_folder):
  """Architecture from init_from (the folder: 32 wide, dropout 0.1); dropout and pooling stay
  the run's own choice."""
  from lm_research.tasks import setup  # noqa: PLC0415
  c = task_config(finetune_tagging, "unused", "unused")
  c.model.update(d_model=64, dropout_rate=0.0, pooling="mean")
  setup.adopt_pretrained(c, pretrained.resolve(bert_folder))
  assert (c.model.d_model, c.model.dropout_rate, c.model.pooling) == (32, 0.0, "mean")
  assert c.data.tokenizer_path == bert_folder  # the folder's own vocab.txt


@pytest.mark.parametrize("problem, message", [
    ("unseen", "the eval set has 1 label"),
    ("empty", "is empty"),
    ("column", "has no 'label' field"),
    ("truncation", "data.truncation='tail' is not one of head, head_tail, windows"),
])
def test_bad_task_data_is_a_one_line_error(tmp_path, problem, message):
  rows = sentiment_rows(40, 0)
  train_path = write_jsonl(tmp_path / "train.jsonl", rows)
  eval_rows = {"unseen": rows[:5] + [{"text": "x", "label": "sarcastic"}],
               "empty": [], "column": [{"text": "no label here"}], "truncation": rows}[problem]
  eval_path = tmp_path / "eval.jsonl"
  write_jsonl(eval_path, eval_rows)
  c = task_config(finetune_classification, train_path, str(eval_path))
  if problem == "truncation":
    c.data.truncation = "tail"
  with pytest.raises(ValueError, match=message) as error:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
      (tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.parametrize("module, arg", [(finetune_seq2seq, ""),
                                         (finetune_causal_lm, "prompt_response")])
def test_generation_tasks_train_score_and_predict(tmp_path, module, arg):
  """T5 seq2seq and GPT prompt/response: loss falls, generations are scored, and predict
  writes the same generations that evaluation scored."""
  rows = [{"input": r["text"], "target": r["label"]} for r in sentiment_rows(200, 0)]
  train_path = write_jsonl(tmp_path / "train.jsonl", rows)
  eval_rows = [{"input": r["text"], "target": r["label"]} for r in sentiment_rows(16, 1)]
  eval_path = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
  c = task_config(module, train_path, eval_path, arg, steps=40, seq_len=16 if arg else 12)
  if module is finetune_seq2seq:
    c.model.update(TINY_T5)
    c.train.target_len = 6
  c.eval.max_new_tokens = 4
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(c, workdir)
  logged = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  assert logged[-1]["eval/loss"] < logged[0]["eval/loss"]
  for name, top in (("exact_match", 1.0), ("bleu", 100.0), ("rouge_l", 1.0)):
    assert 0.0 <= metrics[f"eval/{name}"] <= top
  inputs = tmp_path / "inputs.jsonl"
  inputs.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in eval_rows))
  c.predict.input, c.predict.output = str(inputs), str(tmp_path / "out.jsonl")
  c.predict.max_new_tokens = 4
  c.predict.batch_size = c.train.batch_size  # eval's shapes: the compiled search is reused
  train.predict_only(c, workdir)
  out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [o["input"] for o in out] == [r["input"] for r in eval_rows]
  matches = np.mean([o["output"].strip() == r["target"] for o, r in zip(out, eval_rows)])
  assert matches == pytest.approx(metrics["eval/exact_match"])


def test_steps_from_epochs_and_a_width_scaled_learning_rate(tmp_path):
  from lm_research.data.inputs import DataSources  # noqa: PLC0415
  from lm_research.tasks import setup  # noqa: PLC0415
  train_path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(100, 0))
  c = task_config(finetune_classification, train_path, train_path, epochs=2.0, steps=0,
                  learning_rate=0.0, warmup_ratio=0.1)
  workdir = str(tmp_path / "run")
  labels = setup.prepare(c, workdir, DataSources(c.data, workdir))
  assert labels == ["negative", "neutral", "positive"]
  assert c.train.steps == 13  # ceil(2 epochs * 100 examples / batch 16)
  assert c.train.learning_rate == pytest.approx(3e-4 * 128 / 32)  # d_model 32
  assert c.train.warmup_steps == 1  # int(0.1 * 13)
  assert (c.model.head, c.model.num_labels) == ("sequence_classification", 3)


def test_an_explicit_step_count_wins_over_epochs(tmp_path, caplog):
  """--config.train.steps=20 on a config with train.epochs=2 trains 20 steps, and says so;
  train.steps=0 counts them from the epochs and logs the count of texts."""
  from lm_research.data.inputs import DataSources  # noqa: PLC0415
  from lm_research.tasks import setup  # noqa: PLC0415
  train_path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(100, 0))
  c = task_config(finetune_classification, train_path, train_path, epochs=2.0, steps=20,
                  warmup_ratio=0.1)
  workdir = str(tmp_path / "run")
  with caplog.at_level("INFO"):
    setup.prepare(c, workdir, DataSources(c.data, workdir))
  assert (c.train.steps, c.train.warmup_steps) == (20, 2)
  assert "train.steps=20 is set, so train.epochs=2 is not used (set --config.train.steps=0 to " \
         "train by epochs)." in caplog.text
  c.train.steps = 0  # the fine-tuning configs' default: from epochs, counted in texts
  with caplog.at_level("INFO"):
    setup.prepare(c, workdir, DataSources(c.data, workdir))
  assert "train.epochs=2 over 100 training texts at batch 16: train.steps=13" in caplog.text
