"""Data sources: the local-files TFDS builder in every format, reuse and rebuild, the TFDS
catalog (mocked), Grain compatibility, and a clear error for each kind of bad data."""

import glob
import json
import logging
import os
import pickle

import grain
import pytest
import tensorflow_datasets as tfds

from configs import base
from lm_research.data import formats
from lm_research.data import local_builder
from lm_research.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "data", "shakespeare")


def data_cfg(tmp_path, **overrides):
  """The real config block (so every key exists), pointed at local files in tmp_path."""
  cfg = base.get_base().data
  cfg.source = "files"
  cfg.data_dir = str(tmp_path / "tfds")
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def open_split(tmp_path, split="train", **overrides):
  return sources.open_source(data_cfg(tmp_path, **overrides), split, str(tmp_path / "work"))


def documents(path):
  """A .txt file's documents as the reader must give them: decoded, blocks of non-blank lines
  (blank lines separate documents, as in BERT's pretraining data), line breaks kept."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  blocks, lines = [], []
  for line in text.split("\n") + [""]:
    if line.strip():
      lines.append(line)
    elif lines:
      blocks.append("\n".join(lines))
      lines = []
  return blocks


def records(source):
  return [source[i] for i in range(len(source))]


def write(path, text, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(text)
  return str(path)


def test_bundled_shakespeare_folders(tmp_path):
  train_files = sorted(glob.glob(os.path.join(SHAKESPEARE, "train", "*.txt")))
  eval_files = sorted(glob.glob(os.path.join(SHAKESPEARE, "eval", "*.txt")))
  # relative paths resolve against the repository root from any working directory
  kw = dict(train_path="data/shakespeare/train", eval_path="data/shakespeare/eval")
  train, evals = open_split(tmp_path, "train", **kw), open_split(tmp_path, "eval", **kw)
  assert (len(train_files), len(eval_files)) == (13, 2)
  # each play's speeches (blank lines between them) are its documents
  assert [r["text"] for r in records(train)] == [d for f in train_files for d in documents(f)]
  assert [r["text"] for r in records(evals)] == [d for f in eval_files for d in documents(f)]
  assert (len(train), len(evals)) == (12841, 1712)
  # a document keeps its lines: the units of MLM/NSP
  assert train[0]["text"].split("\n") == documents(train_files[0])[0].split("\n")


def test_grain_reads_the_source_and_it_pickles(tmp_path):
  train = open_split(tmp_path, train_path=os.path.join(SHAKESPEARE, "eval"), eval_path="")
  ds = grain.MapDataset.source(train).shuffle(seed=3).map(lambda r: len(r["text"]))
  lengths = sorted(ds[i] for i in range(len(ds)))
  assert lengths == sorted(len(r["text"]) for r in records(train))
  copy = pickle.loads(pickle.dumps(train))  # Grain worker processes receive it pickled
  assert copy[0] == train[0] and train.__getitems__([0]) == [train[0]]


def test_holdout_every_20th_document(tmp_path):
  texts = [f"document {i}\nsecond line of {i}" for i in range(45)]
  for i, text in enumerate(texts):
    write(tmp_path / "docs" / f"{i:02d}.txt", text + "\n")
  kw = dict(train_path=str(tmp_path / "docs"), eval_path="")
  train, evals = open_split(tmp_path, "train", **kw), open_split(tmp_path, "eval", **kw)
  assert [r["text"] for r in records(evals)] == [texts[19], texts[39]]
  assert [r["text"] for r in records(train)] == [t for i, t in enumerate(texts)
                                                 if i not in (19, 39)]
  # fewer than 20 documents: the last one; a glob picks a subset
  kw = dict(train_path=str(tmp_path / "docs" / "0[0-4].txt"), eval_path="")
  assert [r["text"] for r in records(open_split(tmp_path, "eval", **kw))] == [texts[4]]
  assert len(open_split(tmp_path, "train", **kw)) == 4


def test_single_file_holds_out_its_last_lines(tmp_path):
  lines = [f"line {i}" for i in range(40)]
  path = write(tmp_path / "one.txt", "\n".join(lines) + "\n")
  train = open_split(tmp_path, "train", train_path=path, eval_path="")
  evals = open_split(tmp_path, "eval", train_path=path, eval_path="")
  assert [r["text"] for r in records(train)] == ["\n".join(lines[:38])]
  assert [r["text"] for r in records(evals)] == ["\n".join(lines[38:])]


def test_text_jsonl_and_comma_separated_paths(tmp_path):
  docs = [{"text": "first doc 中文", "id": 1}, {"text": "second\nwith two lines"},
          {"text": "   "}, {"text": "third"}]
  path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n\n")
  other = write(tmp_path / "b.txt", "plain file\n")
  train = open_split(tmp_path, train_path=f"{path}, {other}", eval_path=other)
  assert [r["text"] for r in records(train)] == ["first doc 中文", "second\nwith two lines",
                                                 "third", "plain file"]


def test_classification_tsv_and_jsonl(tmp_path):
  rows = [("a fine film", "pos"), ("dull\u00a0and long", "neg"), ("so-so", "neutral")]
  pair = write(tmp_path / "pair.tsv", "text\ttext_b\tlabel\n"
               + "".join(f"{t}\tsecond {i}\t{lab}\n" for i, (t, lab) in enumerate(rows)))
  single = write(tmp_path / "single.tsv",
                 "id\ttext\tlabel\n"
                 + "".join(f"{i}\t{t}\t{lab}\n" for i, (t, lab) in enumerate(rows)))
  jsonl = write(tmp_path / "e.jsonl", json.dumps({"text": "q", "text_b": "a", "label": 1}) + "\n")
  train = open_split(tmp_path, train_path=pair, eval_path=jsonl, kind="classification")
  assert records(train) == [{"text": t, "text_b": f"second {i}", "label": lab}
                            for i, (t, lab) in enumerate(rows)]
  assert records(open_split(tmp_path, "eval", train_path=pair, eval_path=jsonl,
                            kind="classification")) == [{"text": "q", "text_b": "a", "label": "1"}]
  train = open_split(tmp_path, train_path=single, eval_path=single, kind="classification")
  assert [(r["text"], r["text_b"], r["label"]) for r in records(train)] == [
      (t, "", lab) for t, lab in rows]
  assert sources.label_vocab(train) == ["neg", "neutral", "pos"]
  assert list(sources.iter_texts(open_split(tmp_path, train_path=pair, eval_path=pair,
                                            kind="classification")))[:2] == [
      "a fine film", "second 0"]


def test_conll_tagging(tmp_path):
  text = ("-DOCSTART-\tO\n\nEU\tNNP\tB-ORG\nrejects\tVBZ\tO\nGerman\tJJ\tB-MISC\n\n\n"
          "Peter\tB-PER\nBlackburn\tI-PER\n")
  path = write(tmp_path / "train.conll", text)
  train = open_split(tmp_path, train_path=path, eval_path=path, kind="tagging")
  assert records(train) == [
      {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
      {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]
  assert sources.label_vocab(train, "tags") == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
  # a real-size file: the count equals the blank-line-separated blocks counted directly
  blocks = [f"w{i}\tT{i % 7}\nx\tO" for i in range(300)]
  big = write(tmp_path / "big" / "train.tsv", "\n\n".join(blocks) + "\n")
  source = open_split(tmp_path, train_path=str(tmp_path / "big"), eval_path=big, kind="tagging")
  assert len(source) == 300 and source[299] == {"tokens": ["w299", "x"], "tags": ["T5", "O"]}


def test_seq2seq_jsonl(tmp_path):
  pairs = [{"input": "translate: Haus", "target": "house"}, {"input": "猫", "target": "cat"}]
  path = write(tmp_path / "s2s.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n"
                                               for p in pairs))
  train = open_split(tmp_path, train_path=path, eval_path=path, kind="seq2seq")
  assert records(train) == pairs
  assert list(sources.iter_texts(train)) == ["translate: Haus", "house", "猫", "cat"]


def _prepared_files(source):
  directory = source.description.split(" ")[-1].rsplit(":", 1)[0]
  return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(directory, "*"))}


def test_prepared_once_reused_then_rebuilt_when_files_change(tmp_path):
  path = write(tmp_path / "docs" / "a.txt", "alpha\n")
  write(tmp_path / "docs" / "b.txt", "beta\n")
  first = open_split(tmp_path, train_path=str(tmp_path / "docs"), eval_path="")
  prepared = _prepared_files(first)
  assert any(p.endswith(".array_record-00000-of-00001") for p in prepared)
  again = open_split(tmp_path, train_path=str(tmp_path / "docs"), eval_path="")
  assert _prepared_files(again) == prepared  # same files, untouched: nothing was rebuilt
  write(path, "alpha, edited\n")
  changed = open_split(tmp_path, train_path=str(tmp_path / "docs"), eval_path="")
  assert changed.description != first.description
  assert records(changed) == [{"text": "alpha, edited"}]
  write(tmp_path / "docs" / "c.txt", "gamma\n")  # a new file changes the data too
  assert len(open_split(tmp_path, train_path=str(tmp_path / "docs"), eval_path="")) == 2


def test_undecodable_bytes_are_replaced_with_one_warning(tmp_path, caplog):
  path = write(tmp_path / "odd.txt", b"caf\xe9 au lait\nline two \xff\xfe\n", mode="wb")
  with caplog.at_level(logging.WARNING):
    train = open_split(tmp_path, train_path=path, eval_path=path)
  assert train[0]["text"] == "caf\ufffd au lait\nline two \ufffd\ufffd"
  warnings = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
  assert len(warnings) == 1 and "odd.txt:1" in warnings[0].getMessage()


@pytest.fixture
def catalog():
  """TFDS catalog datasets with generated records: no download, no TensorFlow."""
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _raw(name, split):
  return tfds.data_source(name, split=split)


def test_catalog_text_and_classification(catalog, tmp_path):
  lm1b = open_split(tmp_path, source="lm1b", data_dir="")
  assert lm1b.kind == "text" and len(lm1b) == 4
  assert [r["text"] for r in records(lm1b)] == [r["text"] for r in records(_raw("lm1b", "train"))]
  sst2 = open_split(tmp_path, "eval", source="glue/sst2", data_dir="")
  raw = records(_raw("glue/sst2", "validation"))
  assert sst2.kind == "classification"
  assert sources.label_vocab(sst2) == ["negative", "positive"]
  assert records(sst2) == [{"text": r["sentence"], "text_b": "",
                            "label": ["negative", "positive"][int(r["label"])]} for r in raw]
  # data.fields overrides the table: AG News as single texts (its description) instead of pairs
  news = open_split(tmp_path, source="ag_news_subset", fields="text=description,label=label")
  raw = _raw("ag_news_subset", "train")[2]
  assert news[2] == {"text": raw["description"], "text_b": "",
                     "label": news.class_names["label"][int(raw["label"])]}
  assert news.class_names["label"] == ["World", "Sports", "Business", "Sci/Tech"]


def test_catalog_tagging_and_translation(catalog, tmp_path):
  conll = open_split(tmp_path, source="conll2003", data_dir="")
  raw = _raw("conll2003", "train")[0]
  names = raw_names = conll.class_names["tags"]
  assert raw_names[:3] == ["O", "B-PER", "I-PER"]
  assert conll[0] == {"tokens": list(raw["tokens"]), "tags": [names[i] for i in raw["ner"]]}
  wmt = open_split(tmp_path, "eval", source="wmt14_translate/de-en", data_dir="")
  raw = _raw("wmt14_translate/de-en", "validation")[1]
  assert wmt.kind == "seq2seq" and wmt[1] == {"input": raw["de"], "target": raw["en"]}


def test_catalog_errors(catalog, tmp_path):
  with pytest.raises(ValueError, match=r"cannot map 'glue/sst2' features \(idx, label, sentence\)"):
    open_split(tmp_path, source="glue/sst2", fields="text=review,label=label")
  with pytest.raises(ValueError, match="cannot map 'lm1b' features"):
    open_split(tmp_path, source="lm1b", kind="seq2seq")
  with pytest.raises(ValueError, match="nor a TFDS catalog dataset"):
    open_split(tmp_path, source="no_such_dataset_anywhere")
  with pytest.raises(ValueError, match="OURS=THEIRS"):
    open_split(tmp_path, source="lm1b", fields="text")


def test_unprepared_catalog_dataset_says_how_to_prepare(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  with pytest.raises(ValueError, match=r"'lm1b' split 'train' is not readable .*`tfds build lm1b"):
    open_split(tmp_path, source="lm1b")


@pytest.mark.parametrize("content, kind, message", [
    ("text\tlabel\nfine\tpos\nno label here\n", "classification",
     r"bad\.tsv:3 has 1 tab-separated columns but the header has 2"),
    ("sentence\tlabel\nfine\tpos\n", "classification", "header text.*<TAB>label"),
    ("text\tlabel\nfine\t \n", "classification", "empty label"),
    ("EU\tB-ORG\nrejects O\n", "tagging", r"bad\.tsv:2 has no tab"),
    ("EU\tB-ORG\n\tO\n", "tagging", r"bad\.tsv:2 has an empty token"),
    ('{"text": "ok"}\n{"txt": "typo"}\n', "text", r"bad\.tsv:2 has no 'text' field \(it has txt\)"),
    ('{"input": "x", "target": 3}\n', "seq2seq", "'target' must be a string"),
    ('{"text": "ok"\n', "text", r"bad\.tsv:1 is not valid JSON"),
    ("[1, 2]\n", "text", "not an object"),
    ("", "text", "bad.tsv holds no documents"),
    (" \n\n  \n", "text", "bad.tsv holds no documents"),
    ("text\tlabel\n", "classification", "holds no examples"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, kind, message):
  ext = ".jsonl" if content.startswith(("{", "[")) else ".txt" if kind == "text" else ".tsv"
  path = write(tmp_path / f"bad{ext}", content)
  if ext == ".jsonl":
    message = message.replace(r"bad\.tsv", r"bad\.jsonl")
  message = message.replace("bad.tsv holds", f"bad{ext} holds")
  with pytest.raises(ValueError, match=message) as e:
    open_split(tmp_path, train_path=path, eval_path=path, kind=kind)
  assert "\n" not in str(e.value)


def test_bad_paths_and_settings_are_one_line_errors(tmp_path):
  os.makedirs(tmp_path / "empty_dir")
  write(tmp_path / "notes" / "readme.md", "not data")
  cases = [
      (dict(train_path=""), "data.train_path is empty"),
      (dict(train_path=str(tmp_path / "missing.txt")), "missing.txt' does not exist"),
      (dict(train_path=str(tmp_path / "*.nothing")), "matches no files"),
      (dict(train_path=str(tmp_path / "empty_dir")), "holds no .txt/.jsonl files"),
      (dict(train_path=str(tmp_path / "notes")), "holds no .txt/.jsonl files"),
      (dict(train_path=str(tmp_path / "notes" / "readme.md"), eval_path=str(tmp_path / "nope")),
       "data.eval_path: .*nope' does not exist"),
      (dict(kind="images", train_path="x"), "data.kind='images' is not a record format"),
      (dict(source="synthetic"), "has no records to open"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message) as e:
      open_split(tmp_path, **overrides)
    assert "\n" not in str(e.value)
  one = write(tmp_path / "one.tsv", "text\tlabel\nonly\tpos\n")
  with pytest.raises(ValueError, match="there is no eval data.*set data.eval_path"):
    open_split(tmp_path, "eval", train_path=one, eval_path="", kind="classification")
  with pytest.raises(ValueError, match="split='test'"):
    open_split(tmp_path, "test", train_path=one)


def test_check_labels():
  formats.check_labels(["a", "b", "b"], ["b", "a"])
  with pytest.raises(ValueError, match=r"has 2 label\(s\) the training set lacks: 'c', 'd';"):
    formats.check_labels(["a", "b"], ["a", "d", "c", "c"])
  with pytest.raises(ValueError, match=r"tag\(s\)"):
    formats.check_labels(["O"], ["B-PER"], what="tag")


def test_heldout_indices():
  assert local_builder.heldout(45) == {19, 39}
  assert local_builder.heldout(20) == {19}
  assert local_builder.heldout(19) == {18}
  assert local_builder.heldout(1) == set()
