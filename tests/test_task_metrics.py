"""Task metrics: every expected number is worked out by hand in the comments beside it."""

import matplotlib.image
import numpy as np
import pytest

from lm_research import task_metrics as tm

# ----------------------------------------------------------------------------- classification

# Rows gold, columns predicted:
#   gold 0: predicted 0, 0, 1  -> [2, 1, 0]
#   gold 1: predicted 1, 0     -> [1, 1, 0]
#   gold 2: predicted 1        -> [0, 1, 0]   (class 2 is never predicted)
GOLD = [0, 0, 0, 1, 1, 2]
PRED = [0, 0, 1, 1, 0, 1]


def test_confusion_matrix_counts_gold_rows_predicted_columns():
  np.testing.assert_array_equal(tm.confusion_matrix(GOLD, PRED, 3),
                                [[2, 1, 0], [1, 1, 0], [0, 1, 0]])


def test_classification_scores_macro_average_by_hand():
  # tp = [2, 1, 0]; predicted per class (column sums) = [3, 3, 0]; gold (row sums) = [3, 2, 1].
  # accuracy  = 3 / 6 = 1/2
  # precision = [2/3, 1/3, 0 (no predictions: zero_division=0)] -> mean 1/3
  # recall    = [2/3, 1/2, 0/1]                                 -> mean (7/6)/3 = 7/18
  # f1 = 2tp/(predicted+gold) = [4/6, 2/5, 0]                   -> mean (16/15)/3 = 16/45
  scores = tm.classification_scores(tm.confusion_matrix(GOLD, PRED, 3))
  assert scores == pytest.approx({"accuracy": 1 / 2, "precision": 1 / 3, "recall": 7 / 18,
                                  "f1": 16 / 45})


def test_classification_scores_average_over_every_label_given():
  # A 4th class in neither gold nor predictions scores 0 on all three and is still averaged in
  # (sklearn with labels=range(4)): the sums 1, 7/6 and 16/15 above are divided by 4.
  scores = tm.classification_scores(tm.confusion_matrix(GOLD, PRED, 4))
  assert scores == pytest.approx({"accuracy": 1 / 2, "precision": 1 / 4, "recall": 7 / 24,
                                  "f1": 4 / 15})


def test_classification_rejects_bad_input():
  with pytest.raises(ValueError, match="3 gold labels but 2 predictions"):
    tm.confusion_matrix([0, 1, 1], [0, 1], 2)
  with pytest.raises(ValueError, match="predicted label 2 is outside"):
    tm.confusion_matrix([0, 1], [0, 2], 2)
  with pytest.raises(ValueError, match="empty"):
    tm.classification_scores(np.zeros((2, 2)))


def test_save_confusion_matrix_writes_a_png(tmp_path):
  path = tm.save_confusion_matrix(tm.confusion_matrix(GOLD, PRED, 3),
                                  ["negative", "neutral", "positive"], str(tmp_path / "sub/cm.png"))
  with open(path, "rb") as f:
    assert f.read(4) == b"\x89PNG"
  image = matplotlib.image.imread(path)
  # A 4 x 4 inch figure at 100 dpi, RGBA, not blank.
  assert image.shape == (400, 400, 4)
  assert image[..., :3].std() > 0
  with pytest.raises(ValueError, match="3 label names"):
    tm.save_confusion_matrix(np.eye(2, dtype=int), ["a", "b", "c"], str(tmp_path / "x.png"))


# ----------------------------------------------------------------------------- tagging


@pytest.mark.parametrize("tags, entities", [
    # I- without a B- before it starts an entity.
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),
    # B- right after an entity of the same type starts a second one.
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    # A change of type inside I- ends one entity and starts another.
    (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),
    # An entity running to the end of the sentence is closed there.
    (["O", "B-LOC", "I-LOC"], [("LOC", 1, 2)]),
    # IOBES: S- is one token; E- closes, so the I- after it starts a new entity.
    (["S-PER", "B-LOC", "E-LOC", "I-LOC", "E-LOC"],
     [("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 4)]),
    # Types may contain '-'; only the first one separates the prefix.
    (["B-GPE-CITY", "I-GPE-CITY"], [("GPE-CITY", 0, 1)]),
    # Tags without a prefix: a run of the same tag is one entity, 'O' and a new tag end it.
    (["PER", "PER", "O", "LOC", "ORG"], [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4)]),
    (["O", "O"], []),
])
def test_get_entities_follows_seqeval(tags, entities):
  assert tm.get_entities(tags) == entities


# Gold entities: PER 0..1, LOC 3..3 | ORG 0..0, MISC 1..1   (4)
# Predicted:     PER 0..0, LOC 3..3 | ORG 0..0              (3)
# Correct: LOC and ORG (2). PER has the wrong end: a false positive and a false negative.
GOLD_TAGS = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
PRED_TAGS = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]


def test_entity_scores_by_hand():
  # P = 2/3, R = 2/4 = 1/2, F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
  scores = tm.entity_scores(GOLD_TAGS, PRED_TAGS)
  assert scores["precision"] == pytest.approx(2 / 3)
  assert scores["recall"] == pytest.approx(1 / 2)
  assert scores["f1"] == pytest.approx(4 / 7)
  assert scores["per_type"] == {
      "LOC": {"gold": 1, "predicted": 1, "correct": 1},
      "MISC": {"gold": 1, "predicted": 0, "correct": 0},
      "ORG": {"gold": 1, "predicted": 1, "correct": 1},
      "PER": {"gold": 1, "predicted": 1, "correct": 0},
  }


def test_entities_never_span_sentences():
  # The I-PER opening sentence 2 is its own entity, not a continuation of sentence 1's B-PER:
  # 2 entities, both found when the tags are scored against themselves.
  gold = [["O", "B-PER"], ["I-PER", "O"]]
  scores = tm.entity_scores(gold, gold)
  assert scores["per_type"] == {"PER": {"gold": 2, "predicted": 2, "correct": 2}}
  assert scores["f1"] == 1.0


def test_entity_scores_are_zero_without_entities():
  # No gold and no predicted entities: every denominator is 0, so 0 (seqeval's zero_division).
  assert tm.entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                "per_type": {}}


def test_token_accuracy_over_all_tokens():
  # 6 tokens; sentence 1 differs at token 1 (I-PER vs O), sentence 2 at token 1: 4/6 = 2/3.
  assert tm.token_accuracy(GOLD_TAGS, PRED_TAGS) == pytest.approx(2 / 3)


def test_tag_scores_entity_metrics_only_for_iob_tags():
  assert tm.tag_scores(GOLD_TAGS, PRED_TAGS) == pytest.approx(
      {"token_accuracy": 2 / 3, "precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
  # POS tags: spans mean nothing, so token accuracy alone (1 of 2 tokens right).
  assert tm.tag_scores([["NN", "VB"]], [["NN", "NN"]]) == {"token_accuracy": 0.5}


def test_tagging_rejects_mismatched_sentences():
  with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
    tm.tag_scores(GOLD_TAGS, PRED_TAGS[:1])
  with pytest.raises(ValueError, match="Sentence 1 has 2 gold tags but 1 predicted"):
    tm.entity_scores(GOLD_TAGS, [PRED_TAGS[0], ["B-ORG"]])
  with pytest.raises(ValueError, match="No tokens"):
    tm.token_accuracy([[]], [[]])


# ----------------------------------------------------------------------------- generation


def test_exact_match_strips_whitespace_only():
  # ' Paris\n' == 'Paris' and 'London' == 'London ' after stripping; 'rome' != 'Rome': 2/3.
  assert tm.exact_match([" Paris\n", "London", "rome"], ["Paris", "London ", "Rome"]) == (
      pytest.approx(2 / 3))


def test_bleu_is_100_for_identical_and_0_for_disjoint_text():
  text = ["the quick brown fox jumps over the lazy dog", "a second sentence of several words"]
  assert tm.bleu(text, text) == pytest.approx(100.0)
  # Not one shared unigram, so every n-gram precision is 0.
  assert tm.bleu(["alpha beta gamma delta"], ["one two three four"]) == 0.0


def test_rouge_l_by_hand():
  # LCS('the cat on mat', 'the cat sat on the mat') = 'the cat on mat', 4 tokens:
  # P = 4/4, R = 4/6, F = 2 (1)(2/3) / (1 + 2/3) = 0.8; an identical pair scores 1.
  assert tm.rouge_l(["the cat on mat"], ["the cat sat on the mat"]) == pytest.approx(0.8)
  assert tm.rouge_l(["the cat on mat", "The Cat."], ["the cat sat on the mat", "the cat"]) == (
      pytest.approx((0.8 + 1.0) / 2))


def test_generation_scores_and_bad_input():
  scores = tm.generation_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert scores == pytest.approx({"exact_match": 1.0, "bleu": 100.0, "rouge_l": 1.0})
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    tm.generation_scores(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="lists of strings"):
    tm.bleu("a b", "a b")
