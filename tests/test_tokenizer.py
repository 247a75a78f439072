"""Tokenizer: SentencePiece training and round trips, special ids, Hugging Face files, errors."""

import os
import pickle
import subprocess
import sys

import pytest
import tokenizers

from lm_research.data import tokenizer as tk
from lm_research.data import tokenizer_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAY = os.path.join(REPO, "data", "shakespeare", "train", "macbeth.txt")
UNSEEN_PLAY = os.path.join(REPO, "data", "shakespeare", "eval", "comedy_of_errors.txt")
CHINESE = ("我们是中国人。今天天气很好，我们去公园散步吧！人工智能正在改变世界。"
           "学习语言模型需要大量的数据，也需要耐心和时间。春天来了，花开了，鸟儿在树上唱歌。")
# Characters never seen in training must still round-trip, through byte fallback.
ROUND_TRIP = [
    "To be, or not to be: that is the question.",
    "  Two leading spaces,\tA TAB, trailing spaces  \nand a second line\n\n",
    "1234567890 + 3.14159 = π?",
    CHINESE,
    "混合 text: 机器翻译 and 龘靐齉 (rare) with emoji 🙂 and ünïcödé.",
    "",
]


def _corpus():
  with open(PLAY, encoding="utf-8") as f:
    play = f.read()
  return [play] + [CHINESE] * 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One small unigram model per family, on a play and some Chinese (about a second each)."""
  out = tmp_path_factory.mktemp("sp")
  return {family: tokenizer_training.train_sentencepiece(_corpus(), str(out / family),
                                                         vocab_size=800, family=family)
          for family in tk.FAMILIES}


@pytest.mark.parametrize("family", tk.FAMILIES)
def test_sentencepiece_round_trips_english_and_chinese(trained, family):
  tok = trained[family]
  with open(UNSEEN_PLAY, encoding="utf-8") as f:
    unseen = f.read()[:20000]
  for text in ROUND_TRIP + [unseen]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode_batch(ROUND_TRIP) == [tok.encode(t) for t in ROUND_TRIP]
  # trained on the play, the tokenizer compresses it (real subwords, not bytes)
  assert len(tok.encode(unseen)) < len(unseen) / 1.7
  # common Chinese characters of the training text are pieces of their own, not bytes
  assert all(not tok.id_to_piece(i).startswith("<0x") for i in tok.encode(CHINESE))


def test_special_ids_follow_the_family_layout(trained):
  enc, dec, t5 = trained["encoder"], trained["decoder"], trained["encoder_decoder"]
  assert [enc.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert (enc.pad_id, enc.unk_id, enc.cls_id, enc.sep_id, enc.mask_id) == (0, 1, 2, 3, 4)
  assert (dec.pad_id, dec.eos_id, dec.unk_id, dec.bos_id) == (0, 1, 2, None)
  assert dec.id_to_piece(1) == "<|endoftext|>"
  assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
  assert t5.sentinel_ids == list(range(3, 103))
  assert [t5.id_to_piece(t5.sentinel_ids[i]) for i in (0, 99)] == ["<extra_id_0>", "<extra_id_99>"]
  assert len(set(t5.sentinel_ids) | {0, 1, 2}) == 103
  for tok in (enc, dec, t5):
    assert tok.vocab_size == 800
    # specials never come out of plain text, even text that spells their names
    ids = tok.encode("[MASK] [CLS] <pad> </s> <|endoftext|> text")
    assert not set(ids) & {tok.pad_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id}
    # decode drops padding and end-of-sequence ids
    body = tok.encode("the king")
    ends = [i for i in (tok.eos_id, tok.sep_id) if i is not None]
    assert tok.decode(body + ends + [tok.pad_id] * 3) == "the king"
  # T5 sentinels are user-defined: they appear in text and decode back
  assert t5.encode("<extra_id_0>")[0] == 3
  assert t5.decode([3] + t5.encode(" x") + [4]) == "<extra_id_0> x<extra_id_1>"


def test_word_starts_split_text_into_its_words(trained):
  text = "the quick brownish foxes jumped over seventeen lazily sleeping dogs"
  for tok in trained.values():
    ids = tok.encode(text)
    words = []
    for position, i in enumerate(ids):
      if position == 0 or tok.is_word_start(i):
        words.append([])
      words[-1].append(i)
    assert [tok.decode(w).strip() for w in words] == text.split()
  enc = trained["encoder"]
  assert all(enc.is_word_start(i) for i in enc.encode("我们是中国人"))  # each ideograph a word
  assert not enc.is_word_start(enc.encode("龘")[1])  # a UTF-8 continuation byte


def test_save_load_and_pickle_keep_the_tokenizer(trained, tmp_path):
  tok = trained["encoder_decoder"]
  tok.save(str(tmp_path / "t5.model"))
  for loaded in (tk.load_tokenizer(str(tmp_path / "t5.model"), "encoder_decoder"),
                 tk.load_tokenizer(str(tmp_path), "encoder_decoder"),  # the folder's *.model
                 pickle.loads(pickle.dumps(tok))):
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.sentinel_ids == tok.sentinel_ids
    assert loaded.encode(CHINESE + ROUND_TRIP[1]) == tok.encode(CHINESE + ROUND_TRIP[1])


def test_missing_special_token_is_one_clear_error(trained, tmp_path):
  trained["decoder"].save(str(tmp_path / "gpt.model"))
  with pytest.raises(ValueError, match=r"has no \[CLS\] token .* --family=encoder") as e:
    tk.load_tokenizer(str(tmp_path / "gpt.model"), "encoder")
  assert "\n" not in str(e.value)
  # The encoder model has no end-of-sequence token, which a decoder needs.
  trained["encoder"].save(str(tmp_path / "bert.model"))
  with pytest.raises(ValueError, match="has no <|endoftext|> token"):
    tk.load_tokenizer(str(tmp_path / "bert.model"), "decoder")


def test_t5_spiece_model_without_sentinels_gets_them_appended(trained, tmp_path):
  """T5's own spiece.model has no <extra_id_N>; T5 puts them after the vocabulary, reversed."""
  trained["decoder"].save(str(tmp_path / "spiece.model"))  # a model without sentinels
  t5 = tk.load_tokenizer(str(tmp_path), "encoder_decoder")
  assert t5.vocab_size == 900
  assert t5.sentinel_ids[:2] == [899, 898] and t5.sentinel_ids[-1] == 800
  assert t5.id_to_piece(899) == "<extra_id_0>"
  ids = t5.encode("a b") + [899] + t5.encode(" c")
  assert t5.decode(ids) == "a b<extra_id_0> c"


def test_bpe_training_and_too_small_vocab(tmp_path):
  tok = tokenizer_training.train_sentencepiece(_corpus(), str(tmp_path / "bpe"), vocab_size=600,
                               model_type="bpe", family="decoder")
  assert os.path.exists(tmp_path / "bpe.model")
  assert tok.decode(tok.encode(CHINESE + " and English")) == CHINESE + " and English"
  # byte fallback alone needs 256 pieces
  with pytest.raises(ValueError, match="a 100-piece vocabulary leaves no room for text"):
    tokenizer_training.train_sentencepiece(_corpus(), str(tmp_path / "small"), vocab_size=100)
  with pytest.raises(ValueError, match="no text to train"):
    tokenizer_training.train_sentencepiece(["", "  \n "], str(tmp_path / "empty"), vocab_size=400)


def _gpt2_style(path):
  """A byte-level BPE tokenizer.json like GPT-2's, trained on a few lines."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_corpus()[0].split("\n")[:500], trainer)
  tok.save(str(path))


def test_hf_tokenizer_json_byte_level_bpe(tmp_path):
  _gpt2_style(tmp_path / "tokenizer.json")
  tok = tk.load_tokenizer(str(tmp_path), "decoder")
  assert isinstance(tok, tk.HuggingFaceTokenizer)
  assert tok.eos_id == tok.pad_id == 0 and tok.bos_id is None
  assert tok.vocab_size == 400
  for text in ROUND_TRIP:
    assert tok.decode(tok.encode(text)) == text
  ids = tok.encode("the king")
  assert tok.decode(ids + [tok.eos_id]) == "the king"
  assert [tok.is_word_start(i) for i in tok.encode("the king")][1:] == [
      tok.id_to_piece(i).startswith("\u0120") for i in ids[1:]]
  assert pickle.loads(pickle.dumps(tok)).encode(CHINESE) == tok.encode(CHINESE)
  tok.save(str(tmp_path / "copy.json"))
  copy = tk.load_tokenizer(str(tmp_path / "copy.json"), "decoder")
  assert copy.encode(CHINESE) == tok.encode(CHINESE)
  with pytest.raises(ValueError, match=r"has no \[PAD\] token .* encoder_decoder family"):
    tk.load_tokenizer(str(tmp_path), "encoder_decoder")


def test_hf_tokenizer_json_with_t5_sentinels(tmp_path):
  """T5's tokenizer.json lists <extra_id_0> last: sentinel order comes from names, not ids."""
  def save(vocab, path):
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>")
    tokenizers.Tokenizer(model).save(str(path))

  vocab = ["<pad>", "</s>", "<unk>", "\u2581the", "\u2581king"]
  save(vocab + [f"<extra_id_{i}>" for i in reversed(range(100))], tmp_path / "t5.json")
  t5 = tk.load_tokenizer(str(tmp_path / "t5.json"), "encoder_decoder")
  assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
  assert t5.sentinel_ids == [104 - i for i in range(100)]
  save(vocab, tmp_path / "no_sentinels.json")
  with pytest.raises(ValueError, match="has no <extra_id_0> token"):
    tk.load_tokenizer(str(tmp_path / "no_sentinels.json"), "encoder_decoder")


def test_bert_vocab_txt_wordpiece(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on", "mat",
           ".", "un", "##happy"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tok = tk.load_tokenizer(str(tmp_path), "encoder")
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.eos_id is None and tok.vocab_size == 14
  ids = tok.encode("The cats sat on the mat. Unhappy dog")  # an uncased vocab lowercases
  assert ids == [5, 6, 8, 7, 9, 5, 10, 11, 12, 13, 1]
  assert [tok.is_word_start(i) for i in ids] == [True, True, False, True, True, True, True, True,
                                                 True, False, True]
  assert tok.decode([2] + ids[:8] + [3, 0]) == "the cats sat on the mat."
  with pytest.raises(ValueError, match=r"has no <\|endoftext\|> token"):
    tk.load_tokenizer(str(tmp_path / "vocab.txt"), "decoder")


def test_get_or_train_tokenizer_trains_once_then_loads(tmp_path):
  workdir = str(tmp_path / "run")
  calls = []

  def texts():
    calls.append(1)
    return _corpus()

  tok = tokenizer_training.get_or_train_tokenizer("", texts, "decoder", 500, workdir=workdir)
  assert os.path.exists(os.path.join(workdir, "tokenizer.model")) and len(calls) == 1
  again = tokenizer_training.get_or_train_tokenizer("", texts, "decoder", 500, workdir=workdir)
  assert len(calls) == 1 and again.encode(CHINESE) == tok.encode(CHINESE)
  # a configured path that does not exist yet is where a new model goes
  there = str(tmp_path / "tok" / "mine.model")
  tokenizer_training.get_or_train_tokenizer(there, texts, "encoder", 500, workdir=workdir)
  assert os.path.exists(there) and len(calls) == 2
  with pytest.raises(ValueError, match="does not exist"):
    tokenizer_training.get_or_train_tokenizer(str(tmp_path / "missing_folder"), texts, "encoder",
                                              500)
  with pytest.raises(ValueError, match="does not exist"):
    tk.load_tokenizer(str(tmp_path / "nope.model"), "encoder")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    tk.load_tokenizer(str(tmp_path / "junk.model"), "decoder")


def test_command_line_trains_a_model(tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "lm_research.data.tokenizer_training",
       f"--input={REPO}/data/shakespeare/eval", f"--output={out}", "--vocab_size=500",
       "--family=encoder", "--model_type=bpe"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "500 ids for the encoder family" in result.stdout
  tok = tk.load_tokenizer(f"{out}.model", "encoder")
  assert tok.mask_id == 4 and tok.vocab_size == 500


def test_text_without_spaces_still_round_trips_spaces(tmp_path):
  """A model trained on Chinese alone (no space anywhere) keeps '▁' and ASCII as pieces: a
  space decodes as a space, not as the '▁' of three byte pieces."""
  assert " " not in CHINESE
  tok = tokenizer_training.train_sentencepiece([CHINESE] * 50, str(tmp_path / "zh"), vocab_size=800,
                               family="encoder")
  for text in ["hello world", "１９９８ 1998", "混合 text 和 spaces  here"]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.id_to_piece(tok.encode(" ")[0]) == "\u2581" and len(tok.encode(" ")) == 1
  assert not any(tok.id_to_piece(i).startswith("<0x") for i in tok.encode("hello world"))
