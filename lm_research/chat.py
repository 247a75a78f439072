"""Talk to a model by hand: one user message per line in, the assistant's reply out.

  python -m lm_research.chat --workdir=runs/gpt_chat           # a chat fine-tune's latest weights
  python -m lm_research.chat --init_from=Qwen2.5-0.5B-Instruct/  # a Hugging Face folder as is
  printf 'Hello\\nAnd then?\\n' | python -m lm_research.chat --workdir=runs/gpt_chat

The conversation is kept (a line '/reset' starts a new one) and rendered with the model's chat
template, or the default format of tasks/chat_format.py for a tokenizer without one; a reply
ends at an end-of-turn or any EOS id. Greedy unless --strategy=sample. When the conversation
outgrows --max_prompt_tokens its oldest tokens are dropped. End of input ends the session.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lm_research import paths


def define_flags() -> None:
  """Defines this command's flags, only when it runs: tests import this module beside
  lm_research.main, whose --workdir would clash."""
  flags.DEFINE_string("workdir", None, "A fine-tuning run's directory (its config.json and "
                      "latest checkpoint).")
  flags.DEFINE_string("init_from", None, "A Hugging Face folder to chat with instead (weights, "
                      "tokenizer.json, chat template).")
  flags.DEFINE_string("system", "", "A system message that opens the conversation.")
  flags.DEFINE_integer("max_new_tokens", 128, "Longest reply, in tokens.")
  flags.DEFINE_integer("max_prompt_tokens", 0, "Conversation tokens a reply sees (0: the run's "
                       "train.seq_len, or 1024 for a folder).")
  flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample"], "How to pick tokens.")
  flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
  flags.DEFINE_float("top_p", 0.9, "Sampling: the nucleus' probability mass.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


class Session:
  """A model, its chat format and decoding options; ``reply`` answers a conversation."""

  def __init__(self, model, fmt, prompt_tokens: int, **options):
    from lm_research import decoding  # noqa: PLC0415  (JAX only once flags are valid)
    self.model, self.fmt, self.prompt_tokens = model, fmt, prompt_tokens
    self.cfg = decoding.DecodeConfig(eos_id=fmt.stop_ids, pad_id=fmt.tok.pad_id, **options)
    self.turns = 0

  def reply(self, messages: list[dict], seed: int = 0) -> str:
    """The assistant's next message after ``messages``."""
    import jax  # noqa: PLC0415
    from lm_research import decoding  # noqa: PLC0415
    from lm_research.tasks import chat_examples  # noqa: PLC0415
    ids, mask, _ = chat_examples.prompt_rows(self.fmt, [messages], self.prompt_tokens)
    rng = jax.random.fold_in(jax.random.key(seed), self.turns)
    self.turns += 1
    out = decoding.generate(self.model, ids, mask, self.cfg, rng=rng)
    return self.fmt.reply_text(out.tokens[0, :int(out.lengths[0])].tolist())


def _prompt_tokens(wanted: int, max_len: int | None, max_new_tokens: int) -> int:
  """``wanted`` prompt tokens, or fewer to leave learned positions room for the reply."""
  length = wanted if max_len is None else min(wanted, max_len - max_new_tokens)
  if length < 1:
    raise ValueError(f"--max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                     f"model's {max_len} positions; lower it")
  return length


def from_folder(folder: str, max_prompt_tokens: int = 0, **options) -> Session:
  """A Session on a Hugging Face folder's weights, tokenizer and chat template; ``options``
  are DecodeConfig's (max_new_tokens, strategy, ...)."""
  from lm_research.data.tokenizer import load_tokenizer  # noqa: PLC0415
  from lm_research.interop import hf  # noqa: PLC0415
  from lm_research.tasks import chat_format  # noqa: PLC0415
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise ValueError(f"--init_from={folder!r} is not a Hugging Face folder (no config.json)")
  model, cfg = hf.load(folder)
  fmt = chat_format.chat_format(load_tokenizer(folder, "decoder"), folder)
  learned = cfg.max_len if cfg.position == "learned" else None
  length = _prompt_tokens(max_prompt_tokens or 1024, learned, options.get("max_new_tokens", 32))
  return Session(model, fmt, length, **options)


def from_workdir(workdir: str, max_prompt_tokens: int = 0, **options) -> Session:
  """A Session on a run's latest (EMA, if kept) weights, tokenizer and chat format."""
  from lm_research import export  # noqa: PLC0415  (JAX-heavy imports only once flags are valid)
  from lm_research.tasks import chat_examples  # noqa: PLC0415
  if not (paths.as_path(workdir) / "config.json").is_file():
    raise ValueError(f"--workdir={workdir!r} has no config.json; train there first, or chat "
                     "with a Hugging Face folder through --init_from")

  def language_model(exp):
    if exp.model_cfg.family != "decoder" or exp.model_cfg.head != "lm":
      raise ValueError(f"--workdir={workdir!r} holds a {exp.model_cfg.family} with a "
                       f"{exp.model_cfg.head} head; chat needs a decoder language model")

  model, exp = export.trained_model(workdir, check=language_model)
  learned = exp.model_cfg.max_len if exp.model_cfg.position == "learned" else None
  length = _prompt_tokens(max_prompt_tokens or exp.config.train.seq_len, learned,
                          options.get("max_new_tokens", 32))
  return Session(model, chat_examples.exp_format(exp), length, **options)


def converse(session: Session, lines, out, system: str = "", seed: int = 0) -> int:
  """Answers each line of ``lines`` on ``out`` ('/reset' forgets the conversation); returns
  the number of replies."""
  opening = [{"role": "system", "content": system}] if system else []
  messages, replies = list(opening), 0
  for line in lines:
    text = line.rstrip("\n")
    if not text.strip():
      continue
    if text.strip() == "/reset":
      messages = list(opening)
      continue
    messages.append({"role": "user", "content": text})
    answer = session.reply(messages, seed)
    messages.append({"role": "assistant", "content": answer})
    print(answer, file=out, flush=True)
    replies += 1
  return replies


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if bool(flags.FLAGS.workdir) == bool(flags.FLAGS.init_from):
    raise app.UsageError("give exactly one of --workdir (a trained run) and --init_from (a "
                         "Hugging Face folder)")
  f = flags.FLAGS
  sample = f.strategy == "sample"
  options = dict(max_prompt_tokens=f.max_prompt_tokens, max_new_tokens=f.max_new_tokens,
                 strategy=f.strategy, temperature=f.temperature if sample else 1.0,
                 top_p=f.top_p if sample else 1.0)
  session = (from_workdir(f.workdir, **options) if f.workdir
             else from_folder(f.init_from, **options))
  if sys.stdin.isatty():
    print("Type a message and press Enter; /reset starts over; Ctrl-D ends.", file=sys.stderr)
  converse(session, sys.stdin, sys.stdout, flags.FLAGS.system, flags.FLAGS.seed)


def run() -> None:
  """Console entry: a bad workdir, folder or flag is one line, not a traceback."""
  define_flags()
  try:
    app.run(main)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
