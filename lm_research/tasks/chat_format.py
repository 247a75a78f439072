"""Conversations -> token ids, and where each assistant turn sits in them (chat SFT, predict, chat).

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``.
Two formats turn it into ids:

  template  a Hugging Face tokenizer folder's chat template (data/chat_template.py), rendered
            and tokenized as a whole, as transformers' ``apply_chat_template(tokenize=True)``
  default   for a tokenizer without one (the bundled tiny models'):
                BOS  system: TEXT EOS  user: TEXT EOS  assistant: TEXT EOS ...
            each 'ROLE:' header and each TEXT encoded on its own, EOS ending every turn; the
            generation prompt is the 'assistant:' header

An assistant turn is found by rendering prefixes, so any template works: the conversation up to
the turn with the generation prompt, and up to the end of the turn, must both be token prefixes
of the whole conversation (a template that rewrites earlier turns, e.g. drops their reasoning,
is refused in one line). The turn's trained tokens are its reply and the end-of-turn token that
follows the reply text (<|im_end|>, <|eot_id|>, </s>, EOS), as TRL's assistant-only loss;
what a template adds after that token (Qwen's newline) is not the assistant's to predict.
"""

from __future__ import annotations

from typing import Sequence

import jinja2

from lm_research.data import chat_template

# A conversation the end-of-turn token is read from (every template accepts user, assistant).
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


class ChatFormat:
  """Renders conversations as ids for one tokenizer (a chat template, or the default format)."""

  def __init__(self, tokenizer, template: chat_template.ChatTemplate | None = None,
               eos_ids: Sequence[int] = ()):
    self.tok, self.template = tokenizer, template
    self.bos = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
    self.end_of_turn = self._find_end_of_turn()
    # Generation stops at any of these: the end of a turn, the tokenizer's EOS, and every
    # eos_token_id of the model's generation_config.json.
    self.stop_ids = tuple(dict.fromkeys(
        i for i in (self.end_of_turn, tokenizer.eos_id, *eos_ids) if i is not None))

  @property
  def name(self) -> str:
    """'template' or 'default'."""
    return "template" if self.template is not None else "default"

  def encode(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """The conversation's ids (+ the assistant's opening when ``add_generation_prompt``)."""
    if self.template is None:
      ids = [self.bos]
      for m in messages:
        ids += self.tok.encode(f"{m['role']}:") + self.tok.encode(m["content"]) + [
            self.tok.eos_id]
      return ids + (self.tok.encode("assistant:") if add_generation_prompt else [])
    try:
      text = self.template.render(messages, add_generation_prompt=add_generation_prompt)
    except jinja2.exceptions.TemplateError as e:
      raise ValueError(f"the chat template refused a conversation ({e}); check its roles "
                       "and order") from None
    return self.tok.encode(text)

  def _prefix(self, messages: list[dict], add_generation_prompt: bool, ids: list[int]) -> int:
    """The length of ``messages`` rendered, checked to be a prefix of the whole ``ids``."""
    part = self.encode(messages, add_generation_prompt)
    if ids[:len(part)] != part:
      raise ValueError(f"the chat template renders the first {len(messages)} messages as "
                       "tokens that are not a prefix of the whole conversation's, so the "
                       "assistant's turns cannot be located; use a template that leaves "
                       "earlier turns unchanged (some move the system message into the last "
                       "user turn or drop earlier reasoning)")
    return len(part)

  def _reply_length(self, turn: list[int], content: str) -> int:
    """Tokens of ``turn`` up to the end of the reply text (all of it when the text is not found:
    a template that rewrites the reply)."""
    want = content.strip()
    if want not in self.tok.decode(turn):
      return len(turn)
    lo, hi = 0, len(turn)  # the shortest prefix whose text holds the reply (monotone)
    while lo < hi:
      mid = (lo + hi) // 2
      if want in self.tok.decode(turn[:mid]):
        hi = mid
      else:
        lo = mid + 1
    return lo

  def encode_with_spans(self, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, [(start, end), ...]): each assistant turn's reply and end-of-turn token, as
    half-open token ranges of ids."""
    ids = self.encode(messages)
    spans = []
    for i, m in enumerate(messages):
      if m["role"] != "assistant":
        continue
      start = self._prefix(messages[:i], True, ids)
      end = self._prefix(messages[:i + 1], False, ids)
      reply = self._reply_length(ids[start:end], m["content"])
      spans.append((start, min(end, start + reply + 1)))
    return ids, spans

  def _find_end_of_turn(self) -> int | None:
    """The token that closes the assistant's reply, read from a probe conversation."""
    try:
      ids, [(start, end)] = self.encode_with_spans(_PROBE)
    except ValueError:
      return None
    reply = self._reply_length(ids[start:end], _PROBE[1]["content"])
    return ids[end - 1] if end - start > reply else None

  def reply_prompt(self, messages: list[dict]) -> list[int]:
    """The ids a reply to ``messages`` is generated after (with the generation prompt)."""
    return self.encode(messages, add_generation_prompt=True)

  def reply_text(self, tokens: Sequence[int]) -> str:
    """The generated ``tokens`` as text, cut at the first stop id."""
    tokens = [int(t) for t in tokens]
    cut = next((i for i, t in enumerate(tokens) if t in self.stop_ids), len(tokens))
    return self.tok.decode(tokens[:cut]).strip()


def chat_format(tokenizer, tokenizer_path: str) -> ChatFormat:
  """The format of a run's tokenizer: its folder's chat template, else the default format."""
  if not tokenizer_path:
    return ChatFormat(tokenizer)
  folder = chat_template.tokenizer_folder(tokenizer_path)
  template = (chat_template.load_chat_template(folder)
              if chat_template.has_chat_template(folder) else None)
  return ChatFormat(tokenizer, template, chat_template.generation_eos_ids(folder))
