"""Chinese (and every script written without spaces) end to end, on the bundled data/chinese:
tokenizer training that fits the character set, lossless round trips, character units for
tagging, BERT's blank-line document format, whole-word masking by a segmenter's words."""

import json
import logging
import os
import re
import sys

import numpy as np
import pytest

from lm_research import predict
from lm_research.data import char_coverage, formats, tokenizer_training, units, word_segmenter
from lm_research.objectives import masked_lm
from lm_research.tasks import examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEWS = os.path.join(REPO, "data", "chinese", "news", "train.txt")
NER = os.path.join(REPO, "data", "chinese", "ner", "train.conll")


def _news_lines(limit):
  with open(NEWS, encoding="utf-8") as f:
    return [line for line in f.read().split("\n") if line.strip()][:limit]


@pytest.fixture(scope="module")
def zh_tok(tmp_path_factory):
  """An encoder tokenizer trained on 2,000 sentences of the bundled news (2,531 characters,
  more than a 2,048-piece vocabulary holds at the default coverage): a few seconds."""
  out = tmp_path_factory.mktemp("zh")
  return tokenizer_training.train_sentencepiece(_news_lines(2000), str(out / "zh"), vocab_size=2048,
                                family="encoder")


def test_coverage_fit_counts_characters_as_sentencepiece_does():
  # 'a' x96, 'b' x2, 'c' x1 and one space ('▁'): 100 characters
  text = ["a" * 48 + " " + "a" * 48 + "bbc"]
  coverage, required, account = char_coverage.fit(text, 300, 0.98, fixed=261, family="encoder")
  assert required == "\u2581"  # no room for ASCII in 39 free pieces (needs 4 x 94)
  # 0.98 keeps 'a' and 'b' (96 + 2); SentencePiece counts the required '▁' first, so it must
  # be told 0.99 (1 + 96 + 2) to keep the same characters, not one more
  assert coverage == pytest.approx(0.99) and "keeps 2 of 4 characters" in account
  # 16 free pieces, 12 of them for characters: all fit
  assert char_coverage.fit(text, 277, 1.0, 261, "encoder")[0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="raise model.vocab_size"):
    char_coverage.fit(text, 270, 0.9995, 261, "encoder")
  with pytest.raises(ValueError, match=r"must be in \[0.98, 1\] .*data.character_coverage"):
    char_coverage.fit(text, 4096, 0.9, 261, "encoder")


def test_tokenizer_fits_a_large_character_set_and_logs_it(zh_tok, tmp_path, caplog):
  lines = _news_lines(2000)
  # SentencePiece alone stops: "Vocabulary size is smaller than required_chars. 2048 vs 2752"
  coverage, _, account = char_coverage.fit(lines, 2048, 0.9995, 261, "encoder")
  assert "would keep 2491 characters" in account and coverage == pytest.approx(0.98, abs=1e-4)
  singles = [i for i in range(zh_tok.vocab_size) if len(zh_tok.id_to_piece(i)) == 1]
  assert 1553 <= len(singles) <= 2048 - 261
  with caplog.at_level(logging.INFO), pytest.raises(
      ValueError, match="a 1024-piece vocabulary cannot hold the 1648 characters that cover 98% "
      r"of this text .* raise model.vocab_size \(or --vocab_size\) to at least 1909"):
    tokenizer_training.train_sentencepiece(lines, str(tmp_path / "zh"), vocab_size=1024,
                                           family="encoder")
  assert not os.path.exists(tmp_path / "zh.model")


def test_round_trip_spaces_ascii_and_rare_characters(zh_tok):
  for text in ["１９９８ 1998", "hello world", "我用 iPhone 拍照，很好！", "龘靐齉 🙂 ไทย",
               "  two  spaces\tand a tab\n"]:
    assert zh_tok.decode(zh_tok.encode(text)) == text
  pieces = [zh_tok.id_to_piece(i) for i in zh_tok.encode("hello world 1998")]
  assert not any(p.startswith("<0x") for p in pieces)  # ASCII kept as pieces, not bytes


def test_unit_splitting_and_joining():
  assert units.split_units("北京欢迎你") == ["北", "京", "欢", "迎", "你"]
  assert units.split_units("我用 iPhone 拍照。") == ["我", "用", "iPhone", "拍", "照", "。"]
  assert units.split_units("“菊苣”——新型") == ["“", "菊", "苣", "”", "—", "—", "新", "型"]
  assert units.split_units("ends.") == ["ends."]  # Western text keeps its words whole
  assert units.split_units("the jury said") == ["the", "jury", "said"]
  assert units.split_units("ที่นี่", "chars") == ["ที่", "นี่"]  # vowels and tones stay on
  assert units.split_units("北京 欢迎", "whitespace") == ["北京", "欢迎"]
  assert units.join_units(["我", "用", "iPhone", "拍", "照"]) == "我用iPhone拍照"
  assert units.join_units(["New", "York", "，", "１９９８"]) == "New York，１９９８"
  with pytest.raises(ValueError, match="use one of auto, chars, whitespace"):
    units.split_units("x", "words")


def test_tagging_encodes_characters_without_invented_spaces(zh_tok):
  sentence = next(formats.read_conll(NER))
  pieces = examples.word_pieces(zh_tok, sentence["tokens"])
  space_ids = set(zh_tok.encode(" "))
  assert all(p and not set(p) & space_ids for p in pieces)
  assert [zh_tok.decode(p) for p in pieces] == sentence["tokens"]
  rows = examples.TaggingExamples(zh_tok, "encoder", 128, {"B-LOC": 0, "I-LOC": 1, "O": 2,
                                                           "B-PER": 3, "I-PER": 4, "B-ORG": 5,
                                                           "I-ORG": 6})(sentence, 0)
  assert len(rows) == 1 and rows[0]["tag_weights"].sum() == len(sentence["tokens"])
  # each tag on its character's first piece: one row position per character
  firsts = np.flatnonzero(rows[0]["tag_weights"])
  assert rows[0]["input_ids"][firsts].tolist() == [p[0] for p in pieces]


def test_pretraining_reads_the_pieces_the_tagger_reads(zh_tok):
  # running text (pretraining) and one character at a time (tagging) give the same pieces: no
  # piece joins two Chinese characters, so 江泽民 is never one piece the tagger cannot see
  sentence = "".join(next(formats.read_conll(NER))["tokens"]) + "江泽民１９９８年"
  running = zh_tok.encode(sentence)
  assert running == [i for p in examples.word_pieces(zh_tok, list(sentence)) for i in p]
  assert not any(len(zh_tok.id_to_piece(i)) > 1 and units.has_unspaced(zh_tok.id_to_piece(i))
                 for i in range(zh_tok.vocab_size))


def test_predict_reads_plain_chinese_lines_as_characters(tmp_path):
  path = tmp_path / "in.txt"
  path.write_text("新华社北京十二月三十一日电\nthe jury said\n", encoding="utf-8")
  records = [getattr(r, "record", r) for r in predict.read_inputs(str(path), "tagging")]
  assert records[0]["tokens"] == list("新华社北京十二月三十一日电")
  assert records[1]["tokens"] == ["the", "jury", "said"]


def test_blank_lines_separate_documents(tmp_path):
  path = tmp_path / "docs.txt"
  path.write_text("第一篇。\n第二句。\n\n第二篇。\n\n\n  \n第三篇。\n", encoding="utf-8")
  assert [r["text"] for r in formats.read_text_file(str(path))] == [
      "第一篇。\n第二句。", "第二篇。", "第三篇。"]
  with open(NEWS, encoding="utf-8") as f:
    assert sum(1 for _ in formats.read_text_file(NEWS)) == f.read().count("\n\n") + 1


@pytest.mark.parametrize("content,message", [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8, "is not text (it holds NUL bytes"),
    ("中文文本".encode("utf-16"), "is UTF-16 text, not UTF-8"),
    (bytes(range(128, 256)) * 40, "is not UTF-8 text (100% of its first 5120 bytes"),
    ("中文".encode("utf-8") * 100 + b"\xff\x80\x81", None),  # a few odd bytes: read
], ids=["executable", "utf16", "undecodable", "few_odd_bytes"])
def test_binary_files_are_refused_as_text(tmp_path, content, message):
  path = tmp_path / "program.txt"
  path.write_bytes(content)
  if message is None:
    assert len(list(formats.iter_records("text", [str(path)]))) == 1
    return
  with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
    list(formats.iter_records("text", [str(path)]))


def test_nsp_warns_once_with_one_document(zh_tok, caplog):
  builder = masked_lm.MlmNspBuilder(zh_tok, max_seq_len=64)
  document = [zh_tok.encode(s) for s in _news_lines(40)]
  rng = np.random.default_rng(0)
  with caplog.at_level(logging.WARNING):
    for _ in range(2):
      builder(document, 0, 1, lambda j: document, rng)
      builder(document, 0, 2, lambda j: document, rng)
  warned = [r for r in caplog.records if "NSP has one document" in r.getMessage()]
  assert len(warned) == 1


def _paired_masks(tok, whole_word_mask, monkeypatch):
  """(masked together, masked apart) counts of two-character words: lines of (x, y) pairs of
  single-piece characters, which a fake segmenter calls words of two characters."""
  monkeypatch.setattr(word_segmenter, "_segmenter",
                      [lambda text: [text[i:i + 2] for i in range(0, len(text), 2)]])
  singles = [c for c in "".join(_news_lines(200)) if len(tok.encode(c)) == 1
             and len(tok.id_to_piece(tok.encode(c)[0])) == 1 and units.is_unspaced(c)]
  singles = list(dict.fromkeys(singles))
  xs, ys = singles[:20], singles[20:40]
  rng = np.random.default_rng(0)
  lines = ["".join(xs[i] + ys[j] for i, j in rng.integers(0, 20, (5, 2))) for _ in range(400)]
  document = [ids for ids in map(tok.encode, lines) if len(ids) == 10]
  assert len(document) > 100
  x_ids, y_ids = {tok.encode(c)[0] for c in xs}, {tok.encode(c)[0] for c in ys}
  builder = masked_lm.MlmNspBuilder(tok, max_seq_len=64, whole_word_mask=whole_word_mask)
  together = apart = 0
  for doc_index in range(20):
    for ex in builder(document[doc_index * 5:], doc_index, 2, lambda j: document, rng):
      ids = ex["input_ids"].copy()
      chosen = ex["mlm_weights"] > 0
      ids[chosen] = ex["mlm_targets"][chosen]
      assert ids.max() < tok.vocab_size  # the flag bit is gone from every id
      for p in range(1, 63):
        if ids[p] in x_ids and ids[p + 1] in y_ids and (chosen[p] or chosen[p + 1]):
          together += bool(chosen[p] and chosen[p + 1])
          apart += bool(chosen[p] != chosen[p + 1])
  return together, apart


def test_whole_word_masking_by_segmenter_words(zh_tok, monkeypatch):
  together, apart = _paired_masks(zh_tok, "words", monkeypatch)
  assert together > 50 and apart == 0
  # the same check fails for masks of single pieces (what 'pieces' gives for characters)
  assert _paired_masks(zh_tok, "pieces", monkeypatch)[1] > 20
  with pytest.raises(ValueError, match="data.whole_word_mask='chars'"):
    masked_lm.MlmNspBuilder(zh_tok, max_seq_len=64, whole_word_mask="chars")


def test_word_starts_follow_segmenter_words(zh_tok):
  lengths = word_segmenter.char_lengths(zh_tok)
  ids = zh_tok.encode("北京市欢迎你")
  segment = lambda text: ["北京市", "欢迎", "你"]  # noqa: E731
  starts = word_segmenter.word_starts(ids, zh_tok, segment, lengths, zh_tok.word_starts)
  offsets = np.concatenate([[0], np.cumsum(lengths[ids])[:-1]])
  assert starts.tolist() == [o in (0, 3, 5) for o in offsets]


def test_shipped_chinese_recipes_point_at_the_bundled_data():
  from configs import bert_tiny, finetune_ner_zh, finetune_sentiment_zh  # noqa: PLC0415
  c = bert_tiny.get_config("zh")
  assert (c.model.vocab_size, c.data.train_path) == (4096, "data/chinese/news/train.txt")
  for module in (finetune_ner_zh, finetune_sentiment_zh):
    c = module.get_config()
    assert c.init_from == "runs/bert_tiny_zh"
    for path in (c.data.train_path, c.data.eval_path):
      assert os.path.exists(os.path.join(REPO, path)), path
  labels = json.dumps(sorted({t for r in formats.read_conll(NER) for t in r["tags"]}))
  assert labels == json.dumps(["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"])


def test_without_jieba_whole_words_are_the_tokenizers(zh_tok, monkeypatch, caplog):
  monkeypatch.setattr(word_segmenter, "_segmenter", [])
  monkeypatch.setitem(sys.modules, "jieba", None)  # `import jieba` raises ImportError
  with caplog.at_level(logging.INFO):
    builder = masked_lm.MlmNspBuilder(zh_tok, max_seq_len=64, whole_word_mask="words")
  assert not builder.by_words and builder.word_start_table is not None
  assert any("jieba is not installed" in r.getMessage() for r in caplog.records)
