"""Chat SFT: the assistant-only loss mask (Qwen2.5's template, and the default format), several
EOS ids, and the bundled recipe end to end: a few training steps, predict, the chat REPL."""

import dataclasses
import io
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from configs import finetune_causal_lm
from lm_research import decoding, train
from lm_research.data import chat_template, formats
from lm_research.data.tokenizer import load_tokenizer
from lm_research.decoding import search
from lm_research.tasks import chat_examples, chat_format

# Qwen2.5-Instruct's template without its tools branch (tests/test_hf_llama.py checks the full
# rendering against transformers).
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content']"
    " + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}"
    "{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi, how are you?"},
        {"role": "user", "content": "Fine, and you?"}, {"role": "assistant", "content": "Well."}]


LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# EOS is <|endoftext|>, as in Qwen2.5 base models: <|im_end|> must be found from the template.
QWEN_CONFIG = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


pytestmark = pytest.mark.usefixtures("fast_decoding_compiles")


def bpe_folder(path, template=None, generation_eos=None, specials=QWEN_SPECIALS,
               config=QWEN_CONFIG):
  """A byte-level BPE tokenizer.json folder with Qwen's special tokens (and a template)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(
      [m["content"] for m in CHAT] * 4, tokenizers.trainers.BpeTrainer(
          vocab_size=300, special_tokens=specials,
          initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  path.mkdir(exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  config = dict(config, chat_template=template) if template else config
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  if generation_eos is not None:
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
  return str(path), tok


def test_loss_mask_covers_exactly_the_assistant_turns_of_a_qwen_template(tmp_path):
  """Two turns: each reply and its <|im_end|> are trained; the newline after it, the system
  and user turns and the 'assistant\\n' openings are not."""
  folder, raw = bpe_folder(tmp_path, QWEN_TEMPLATE, generation_eos=[0])
  tok = load_tokenizer(folder, "decoder")
  fmt = chat_format.chat_format(tok, folder)
  enc = lambda text: raw.encode(text, add_special_tokens=False).ids  # noqa: E731
  im_end = raw.token_to_id("<|im_end|>")
  pieces = [  # (text, trained) by hand, in order
      ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
       "<|im_start|>assistant\n", False), ("Hi, how are you?<|im_end|>", True),
      ("\n<|im_start|>user\nFine, and you?<|im_end|>\n<|im_start|>assistant\n", False),
      ("Well.<|im_end|>", True), ("\n", False)]
  want_ids = [i for text, _ in pieces for i in enc(text)]
  want_trained = [float(t) for text, t in pieces for _ in enc(text)]
  row, = chat_examples.ChatExamples(fmt, 96)({"messages": json.dumps(CHAT)}, 3)
  n = len(want_ids) - 1
  np.testing.assert_array_equal(row["input_ids"][:n], want_ids[:-1])
  np.testing.assert_array_equal(row["targets"][:n], want_ids[1:])
  np.testing.assert_array_equal(row["loss_mask"], want_trained[1:] + [0.0] * (96 - n))
  assert int(row["index"]) == 3
  assert fmt.name == "template" and fmt.end_of_turn == im_end
  assert (tok.eos_id, im_end) == (0, 2)
  assert fmt.stop_ids == (im_end, 0)  # the end of turn, then EOS (= generation_config's list)
  assert fmt.reply_prompt(CHAT[:2]) == enc(pieces[0][0])
  assert fmt.reply_text(enc("Sure thing") + [im_end, 5, 6]) == "Sure thing"
  assert fmt.reply_text(enc("Sure thing") + [0, 5, 6]) == "Sure thing"


@pytest.mark.slow  # imports transformers
def test_spans_match_transformers_assistant_masks(tmp_path):
  """Qwen's template with {% generation %} around reply + <|im_end|>: transformers'
  return_assistant_tokens_mask (what TRL's assistant_only_loss trains) marks the same tokens
  that rendering prefixes finds in the unmarked template."""
  transformers = pytest.importorskip("transformers")
  plain = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
  marked = QWEN_TEMPLATE.replace(plain, (
      "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}"
      "{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}"
      + plain + "{%- endif %}"))
  assert marked != QWEN_TEMPLATE
  theirs = transformers.AutoTokenizer.from_pretrained(bpe_folder(tmp_path / "marked", marked)[0])
  want = theirs.apply_chat_template(CHAT, tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True)
  folder = bpe_folder(tmp_path / "plain", QWEN_TEMPLATE)[0]
  ids, spans = chat_format.chat_format(load_tokenizer(folder, "decoder"), folder) \
      .encode_with_spans(CHAT)
  assert ids == want["input_ids"]
  assert [int(any(a <= i < b for a, b in spans)) for i in range(len(ids))] == \
      want["assistant_masks"]


def test_llama3_template_turns_end_at_eot_and_stop_at_every_eos(tmp_path):
  """Llama 3: BOS from the template's text, replies trimmed, <|eot_id|> ends each turn, and
  generation stops at it and at generation_config.json's <|end_of_text|>."""
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"]
  folder, raw = bpe_folder(tmp_path, LLAMA3_TEMPLATE, [1, 4], specials,
                           {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
  tok = load_tokenizer(folder, "decoder")
  fmt = chat_format.chat_format(tok, folder)
  ids, spans = fmt.encode_with_spans(CHAT[:2] + [{"role": "assistant", "content": " Hi! "}]
                                     + CHAT[3:])
  assert ids[0] == raw.token_to_id("<|begin_of_text|>") and fmt.end_of_turn == 4
  assert [tok.decode(ids[a:b - 1]) for a, b in spans] == ["Hi!", "Well."]
  assert [ids[b - 1] for _, b in spans] == [4, 4] and spans[-1][1] == len(ids)
  assert fmt.stop_ids == (4, 1)


def test_default_format_round_trip(tmp_path):
  """A tokenizer without a chat template: BOS, 'role:' + text + EOS per turn; the spans decode
  to the replies, and a generated reply decodes back to its text."""
  folder, raw = bpe_folder(tmp_path)
  tok = load_tokenizer(folder, "decoder")
  fmt = chat_format.chat_format(tok, folder)
  eos = tok.eos_id
  ids, spans = fmt.encode_with_spans(CHAT)
  want = [eos]  # no BOS token: GPT-2 style, documents start with EOS
  for m in CHAT:
    want += tok.encode(f"{m['role']}:") + tok.encode(m["content"]) + [eos]
  assert fmt.name == "default" and ids == want
  assert [tok.decode(ids[a:b - 1]) for a, b in spans] == ["Hi, how are you?", "Well."]
  assert [ids[b - 1] for _, b in spans] == [eos, eos] and fmt.stop_ids == (eos,)
  prompt = fmt.reply_prompt(CHAT[:4])
  assert prompt == ids[:spans[1][0]] and prompt[-len(tok.encode("assistant:")):] == \
      tok.encode("assistant:")
  assert fmt.reply_text(tok.encode("Well.") + [eos, 7]) == "Well."


def test_templates_that_rewrite_earlier_turns_and_bad_lines_are_refused(tmp_path):
  last_only = "{% for m in messages %}{% if loop.last %}{{ m.content }}{% endif %}{% endfor %}"
  folder, _ = bpe_folder(tmp_path, last_only)
  fmt = chat_format.chat_format(load_tokenizer(folder, "decoder"), folder)
  with pytest.raises(ValueError, match=r"^the chat template renders the first 2 messages as "
                     r"tokens that are not a prefix of the whole conversation's"):
    fmt.encode_with_spans(CHAT)
  bad = tmp_path / "bad.jsonl"
  for line, message in [
      ({"messages": [{"role": "user", "content": "hi"}]},
       "bad.jsonl:1: the conversation has no assistant message, so nothing to learn"),
      ({"messages": [{"role": "bot", "content": "hi"}]},
       "bad.jsonl:1: message 1 has role 'bot'; use one of system, user, assistant"),
      ({"text": "hi"}, "bad.jsonl:1 has no 'messages' field (it has text)")]:
    bad.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
      list(formats.read_chat_jsonl(str(bad)))


class _Stepper:
  """A fake model: every step's most likely token is ``first``."""

  def __init__(self, first, vocab=8):
    self.logits = jnp.zeros((1, vocab)).at[0, first].set(5.0)

  def start(self, ids, mask):
    return self.logits, jnp.zeros(())

  def advance(self, state, token):
    return jnp.broadcast_to(self.logits, (token.shape[0], self.logits.shape[1])), state

  def take_rows(self, state, rows):
    return state


def test_generation_stops_at_any_of_several_eos_ids():
  """generation_config.json's list: the second EOS id ends a row as the first does."""
  cfg = decoding.DecodeConfig(max_new_tokens=5, eos_id=[3, 6], pad_id=0)
  ids = jnp.ones((1, 2), jnp.int32)
  out = search.sample(_Stepper(6), ids, ids, cfg, rng=jax.random.key(0))
  assert (int(out.lengths[0]), out.tokens[0].tolist()) == (1, [6, 0, 0, 0, 0])
  free = search.sample(_Stepper(5), ids, ids, cfg, rng=jax.random.key(0))
  assert int(free.lengths[0]) == 5
  beam = search.beam_search(_Stepper(6), ids, ids, dataclasses.replace(
      cfg, strategy="beam", num_beams=2))
  assert (int(beam.lengths[0]), int(beam.tokens[0, 0])) == (1, 6)
  assert decoding.DecodeConfig(eos_id=[7]).eos_id == 7 and cfg.eos_ids == (3, 6)
  with pytest.raises(ValueError, match="DecodeConfig.eos_id is an empty list"):
    decoding.DecodeConfig(eos_id=[])


def test_generation_eos_ids_read_from_a_folder(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
  assert chat_template.generation_eos_ids(tmp_path) == [2]
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
  assert chat_template.generation_eos_ids(tmp_path) == [128001, 128009]
  assert chat_template.generation_eos_ids(tmp_path / "tokenizer.model") == []  # not a folder


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
  """configs/finetune_causal_lm.py:chat on the bundled set: a fresh tiny model, 6 steps."""
  c = finetune_causal_lm.get_config("chat")
  c.init_from = ""
  c.model.update(vocab_size=512, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=160,
                 dropout_rate=0.0)
  c.train.update(steps=6, batch_size=8, seq_len=128, warmup_steps=1, learning_rate=3e-3)
  c.eval.update(every_steps=6, max_new_tokens=4, steps=1)  # 8 of the 48 eval conversations
  c.data.length_buckets = 0  # one row length: one compiled train and eval step
  c.checkpoint.every_steps = 0
  c.predict.update(max_new_tokens=4, batch_size=8)
  workdir = str(tmp_path_factory.mktemp("chat") / "run")
  return c, workdir, train.train_and_evaluate(c, workdir)


@pytest.mark.slow
def test_chat_recipe_trains_on_the_bundled_set(chat_run):
  _, workdir, metrics = chat_run
  logged = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  assert logged[-1]["eval/loss"] < logged[0]["eval/loss"]
  assert 0.0 <= metrics["eval/exact_match"] <= 1.0 and "eval/rouge_l" in metrics


@pytest.mark.slow
def test_predict_writes_one_reply_per_line(chat_run, tmp_path):
  c, workdir, _ = chat_run
  inputs = tmp_path / "in.jsonl"
  chat = [{"role": "user", "content": 'Who says this line? "Is this a dagger"'}]
  inputs.write_text('{"text": "Which play is it from?"}\n\n' + json.dumps({"messages": chat})
                    + "\n")
  c.predict.input, c.predict.output = str(inputs), str(tmp_path / "out.jsonl")
  train.predict_only(c, workdir)
  out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [o["line"] for o in out] == [1, 2, 3] and out[1] == {"line": 2, "error": "blank line"}
  assert out[0]["input"] == "Which play is it from?" and out[2]["input"] == chat
  assert all(isinstance(o["output"], str) and o["truncated"] is False for o in (out[0], out[2]))


@pytest.mark.slow
def test_chat_repl_answers_each_piped_line(chat_run):
  from lm_research import chat  # noqa: PLC0415
  _, workdir, _ = chat_run
  session = chat.from_workdir(workdir, max_new_tokens=4)
  out = io.StringIO()
  assert chat.converse(session, io.StringIO("Hello\n\n/reset\nWho are you?\n"), out) == 2
  assert len(out.getvalue().split("\n")) == 3  # two replies, each ending its line
  assert session.turns == 2


@pytest.mark.slow  # starts a process
def test_chat_cli_needs_one_model_source():
  result = subprocess.run([sys.executable, "-m", "lm_research.chat"], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode != 0
  assert "give exactly one of --workdir (a trained run) and --init_from" in result.stderr


@pytest.mark.slow
def test_chat_with_a_hugging_face_folder_as_is(tmp_path):
  """--init_from: a Qwen2 folder (random weights) with its template answers each line; its
  replies stop at <|im_end|> or generation_config.json's <|endoftext|>."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from lm_research import chat  # noqa: PLC0415
  folder, _ = bpe_folder(tmp_path, QWEN_TEMPLATE, generation_eos=[0])
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256)).save_pretrained(
          folder)
  session = chat.from_folder(folder, max_prompt_tokens=96, max_new_tokens=3)
  assert session.cfg.eos_ids == (2, 0) and session.prompt_tokens == 96
  out = io.StringIO()
  assert chat.converse(session, io.StringIO("Hello there\nFine, and you?\n"), out,
                       system="Be brief.") == 2
  assert out.getvalue().count("\n") == 2
