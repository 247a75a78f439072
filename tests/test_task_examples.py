"""Fine-tuning rows on hand-made examples: layouts, label alignment, loss masks, predict inputs."""

import json

import numpy as np
import pytest

from lm_research import predict
from lm_research.tasks import examples


class CharPairTokenizer:
  """Each word becomes pieces of two characters, id = 10 + a running vocabulary index."""

  pad_id, unk_id, cls_id, sep_id, eos_id, bos_id = 0, 1, 2, 3, 4, None

  def __init__(self):
    self.vocab = {}

  def encode(self, text):
    return [self.vocab.setdefault(w[i:i + 2], 10 + len(self.vocab))
            for w in text.split() for i in range(0, len(w), 2)]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


@pytest.fixture
def tok():
  return CharPairTokenizer()


def test_classification_pair_layout_and_longest_first_truncation(tok):
  build = examples.ClassificationExamples(tok, "encoder", 8, {"no": 0, "yes": 1})
  # 'aabbcc' -> 3 pieces, 'dd' -> 1: [CLS] a a a [SEP] d [SEP] fits 7 of 8.
  row, = build({"text": "aabbcc", "text_b": "dd", "label": "yes"}, 5)
  aa, bb, cc, dd = tok.vocab["aa"], tok.vocab["bb"], tok.vocab["cc"], tok.vocab["dd"]
  np.testing.assert_array_equal(row["input_ids"], [2, aa, bb, cc, 3, dd, 3, 0])
  np.testing.assert_array_equal(row["token_type_ids"], [0, 0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(row["attention_mask"], [1, 1, 1, 1, 1, 1, 1, 0])
  assert (row["label"], row["weight"], row["index"]) == (1, 1.0, 5)
  # 5 + 5 pieces into 8 - 3 = 5 slots: the longer side loses first, so 3 + 2.
  row, = build({"text": "aabbccddee", "text_b": "ffgghhiijj", "label": "no"}, 0)
  assert row["input_ids"].tolist() == [2, aa, bb, cc, 3, tok.vocab["ff"], tok.vocab["gg"], 3]


def test_decoder_classification_ends_in_eos_and_unlabelled_weighs_nothing(tok):
  build = examples.ClassificationExamples(tok, "decoder", 6, {"a": 0, "b": 1})
  row, = build({"text": "xxyy", "text_b": ""}, 0)  # predict time: no label
  assert row["input_ids"].tolist() == [tok.vocab["xx"], tok.vocab["yy"], 4, 0, 0, 0]
  assert row["weight"] == 0.0


def test_tagging_labels_sit_on_first_pieces_and_map_back(tok):
  tags = {"O": 0, "B-PER": 1, "I-PER": 2}
  build = examples.TaggingExamples(tok, "encoder", 16, tags)
  record = {"tokens": ["John", "Smithson", "ran"], "tags": ["B-PER", "I-PER", "O"]}
  row, = build(record, 3)
  # [CLS] Jo hn Sm it hs on ra n [SEP]: words start at positions 1, 3 and 7.
  assert np.flatnonzero(row["tag_weights"]).tolist() == [1, 3, 7]
  assert row["tags"][[1, 3, 7]].tolist() == [1, 2, 0]
  assert row["tags"].sum() == 3  # nothing else carries a tag
  predicted = np.zeros(16, np.int32)
  predicted[[1, 2, 3, 7]] = [1, 0, 2, 0]  # position 2 (a second piece) is ignored
  assert examples.word_predictions(row["tag_weights"], predicted) == [1, 2, 0]


def test_long_sentences_continue_in_the_next_row(tok):
  build = examples.TaggingExamples(tok, "encoder", 6, {"O": 0, "X": 1})
  words = ["aaaa", "bb", "cccc", "dd", "e"]  # pieces 2, 1, 2, 1, 1; 4 fit a row
  rows = build({"tokens": words, "tags": ["X", "O", "X", "O", "X"]}, 0)
  assert [int(r["word_offset"]) for r in rows] == [0, 2]
  got = [examples.word_predictions(r["tag_weights"], r["tags"]) for r in rows]
  assert got == [[1, 0], [1, 0, 1]]  # every word once, in order


def test_unseen_tag_gets_the_id_past_the_last(tok):
  build = examples.TaggingExamples(tok, "encoder", 8, {"O": 0, "N": 1})
  row, = build({"tokens": ["a", "b"], "tags": ["N", "RARE"]}, 0)
  assert row["tags"][[1, 2]].tolist() == [1, 2]


def test_prompt_response_loss_covers_only_the_response(tok):
  build = examples.PromptResponseExamples(tok, 8)
  row, = build({"input": "qqrr", "target": "ss"}, 0)
  qq, rr, ss = tok.vocab["qq"], tok.vocab["rr"], tok.vocab["ss"]
  # sequence: EOS(bos) qq rr ss EOS -> inputs drop the last, targets the first
  assert row["input_ids"][:4].tolist() == [4, qq, rr, ss]
  assert row["targets"][:4].tolist() == [qq, rr, ss, 4]
  assert row["loss_mask"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]


def test_seq2seq_rows_shift_targets_right(tok):
  build = examples.Seq2SeqExamples(tok, 6, 4)
  row, = build({"input": "aabb", "target": "cc"}, 2)
  cc = tok.vocab["cc"]
  assert row["input_ids"].tolist()[:3] == [tok.vocab["aa"], tok.vocab["bb"], 4]
  assert row["targets"].tolist() == [cc, 4, 0, 0]
  assert row["decoder_input_ids"].tolist() == [0, cc, 0, 0]
  assert row["loss_mask"].tolist() == [1, 1, 0, 0]


def test_predict_reads_lines_tsv_and_jsonl(tmp_path):
  """One entry per input line, numbered from 1 (a .tsv's from 2, after its header); a blank line
  is an entry with an error, not a dropped line."""
  lines = tmp_path / "in.txt"
  lines.write_text("first text\n\nsecond text\n")
  assert predict.read_inputs(str(lines), "classification") == [
      (1, {"text": "first text", "text_b": ""}, None), (2, None, "blank line"),
      (3, {"text": "second text", "text_b": ""}, None)]
  tsv = tmp_path / "in.tsv"
  tsv.write_text("text\ttext_b\nq one\ta one\n")
  assert predict.read_inputs(str(tsv), "classification") == [
      (2, {"text": "q one", "text_b": "a one"}, None)]
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text(json.dumps({"tokens": ["A", "b"]}) + "\n" + json.dumps({"text": "c d"}) + "\n")
  assert predict.read_inputs(str(jsonl), "tagging") == [(1, {"tokens": ["A", "b"]}, None),
                                                        (2, {"tokens": ["c", "d"]}, None)]
  assert predict.read_inputs(str(lines), "generation")[0] == (1, {"input": "first text"}, None)


@pytest.mark.parametrize("content, message", [
    ("", "holds no inputs"),
    ('{"label": 1}\n', "has none of the fields text"),
    ("{not json\n", "is not JSON"),
])
def test_predict_input_errors_are_one_line(tmp_path, content, message):
  path = tmp_path / "in.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=message) as error:
    predict.read_inputs(str(path), "classification")
  assert "\n" not in str(error.value)


def test_head_tail_truncation_keeps_the_first_quarter_and_the_end(tok):
  build = examples.ClassificationExamples(tok, "encoder", 10, {"x": 0}, truncation="head_tail")
  text = " ".join(f"w{i:02d}" for i in range(20))  # 20 words of 2 pieces: 40 ids
  ids = tok.encode(text)
  row, = build({"text": text, "label": "x"}, 0)
  # budget 8 = 2 head + 6 tail
  assert row["input_ids"].tolist() == [2] + ids[:2] + ids[-6:] + [3]


def test_windows_cover_the_whole_text_evenly(tok):
  build = examples.ClassificationExamples(tok, "encoder", 10, {"x": 0, "y": 1},
                                          truncation="windows")
  ids = tok.encode(" ".join(f"w{i:02d}" for i in range(10)))  # 20 ids, budget 8
  rows = build({"text": " ".join(f"w{i:02d}" for i in range(10)), "label": "y"}, 7)
  # ceil(20 / 8) = 3 windows starting at 0, 6 and 12 (the last one ends with the text)
  assert [r["input_ids"].tolist() for r in rows] == [
      [2] + ids[0:8] + [3], [2] + ids[6:14] + [3], [2] + ids[12:20] + [3]]
  assert [(r["label"], r["weight"], r["index"]) for r in rows] == [(1, 1.0, 7)] * 3
  short, = build({"text": "aabb", "label": "x"}, 0)  # fits: one row, as with 'head'
  assert short["input_ids"].tolist()[:4] == [2, tok.vocab["aa"], tok.vocab["bb"], 3]
  decoder = examples.ClassificationExamples(tok, "decoder", 9, {"x": 0}, truncation="windows")
  assert [r["input_ids"].tolist() for r in decoder({"text": "w00 w01 w02 w03 w04"}, 0)] == [
      ids[0:8] + [4], ids[2:10] + [4]]


def test_document_probs_average_each_records_windows():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.3, 0.7]], np.float32)
  records, averaged = examples.document_probs(probs, np.array([4, 2, 4, 4]))
  assert records.tolist() == [2, 4]
  np.testing.assert_allclose(averaged, [[0.2, 0.8], [1.7 / 3, 1.3 / 3]], rtol=1e-6)


def test_unknown_truncation_is_a_one_line_error(tok):
  with pytest.raises(ValueError, match="data.truncation='tail' is not one of head, head_tail"):
    examples.ClassificationExamples(tok, "encoder", 8, {"x": 0}, truncation="tail")


def test_words_are_encoded_as_in_running_text():
  class SpaceMarking:
    unk_id = 1

    def encode_batch(self, texts):  # like SentencePiece without a dummy prefix
      return [[100 + t.startswith(" ")] for t in texts]

  assert examples.word_pieces(SpaceMarking(), ["The", "county", "jury"]) == [[100], [101], [101]]
