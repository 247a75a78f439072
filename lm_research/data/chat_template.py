"""Chat templates and special tokens of Hugging Face tokenizer folders (Llama 3, Qwen2.5, ...).

  template = load_chat_template("Qwen2.5-0.5B-Instruct/")
  text = template.render([{"role": "user", "content": "你好"}], add_generation_prompt=True)

The template (``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``) is
rendered as transformers' ``apply_chat_template(..., tokenize=False)`` does: a sandboxed jinja2
environment with trim_blocks / lstrip_blocks, loop controls and ``{% generation %}``, its
``tojson`` (no HTML escaping, non-ASCII kept), ``raise_exception`` and ``strftime_now``, and the
special tokens (``bos_token``, ``eos_token``, ...) as variables.

``generation_eos_ids(folder)`` gives every id that ends a reply (generation_config.json's
``eos_token_id``, which may be a list), and ``parse_messages`` checks a conversation.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

_ROLES = ("bos", "eos", "unk", "pad")  # the special tokens a template or a decoder may need
MESSAGE_ROLES = ("system", "user", "assistant")  # what a conversation's messages may be


def _config(folder: Path) -> dict[str, Any]:
  path = folder / "tokenizer_config.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def _text(value: Any) -> str | None:
  """A token as tokenizer_config.json stores it: a string or an AddedToken dict."""
  return value.get("content") if isinstance(value, dict) else value


def special_tokens(folder: str | Path) -> dict[str, str]:
  """{'bos_token': '<|begin_of_text|>', 'eos_token': ...} as the folder declares them."""
  folder = Path(folder)
  declared = {}
  for source in (folder / "special_tokens_map.json", folder / "tokenizer_config.json"):
    if source.is_file():  # tokenizer_config.json wins, as in transformers
      declared.update(json.loads(source.read_text()))
  return {f"{role}_token": _text(declared[f"{role}_token"]) for role in _ROLES
          if _text(declared.get(f"{role}_token"))}


def declared_ids(folder: str | Path, token_to_id: Callable[[str], int | None]) -> dict[str, int]:
  """{'eos': id, ...} of the special tokens the folder declares (they win over name guesses)."""
  ids = {name.removesuffix("_token"): token_to_id(text)
         for name, text in special_tokens(folder).items()}
  return {role: i for role, i in ids.items() if i is not None}


def tokenizer_folder(tokenizer_path: str | Path) -> Path:
  """The folder of a tokenizer file or folder: where its chat template and configs would be."""
  path = Path(tokenizer_path)
  return path if path.is_dir() else path.parent


def generation_eos_ids(folder: str | Path) -> list[int]:
  """Every id that ends a reply: generation_config.json's ``eos_token_id`` (an int or a list,
  e.g. Llama 3's <|end_of_text|>, <|eom_id|>, <|eot_id|>), else config.json's; [] if neither."""
  folder = Path(folder)
  for name in ("generation_config.json", "config.json"):
    path = folder / name
    value = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    if value is not None:
      return [int(i) for i in (value if isinstance(value, list) else [value])]
  return []


def parse_messages(value: Any, where: str, need_assistant: bool = True) -> list[dict[str, str]]:
  """A conversation (a list, or its JSON text) checked: {role, content} objects, with an
  assistant turn when ``need_assistant`` (one-line ValueError naming ``where`` otherwise)."""
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: messages is not JSON ({e.msg})") from None
  if not isinstance(value, list) or not value:
    raise ValueError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} "
                     "objects")
  out = []
  for i, m in enumerate(value, 1):
    if not isinstance(m, dict) or not isinstance(m.get("content"), str):
      raise ValueError(f"{where}: message {i} must be an object with a string 'content'")
    if m.get("role") not in MESSAGE_ROLES:
      raise ValueError(f"{where}: message {i} has role {m.get('role')!r}; use one of "
                       f"{', '.join(MESSAGE_ROLES)}")
    out.append({"role": m["role"], "content": m["content"]})
  if need_assistant and not any(m["role"] == "assistant" for m in out):
    raise ValueError(f"{where}: the conversation has no assistant message, so nothing to learn; "
                     "give each line at least one")
  return out


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


class _Generation(jinja2.ext.Extension):
  """transformers' ``{% generation %}...{% endgeneration %}``: marks the assistant's text (for
  masks in training), rendered as the text itself."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller) -> str:
    return caller()


class ChatTemplate:
  """A compiled chat template and the special tokens it is rendered with."""

  def __init__(self, source: str, tokens: dict[str, str]):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
      self._template = env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ValueError(f"chat_template does not parse as jinja2 (line {e.lineno}: {e.message}); "
                       "use the tokenizer_config.json that came with the model.") from None
    self.source = source
    self.tokens = dict(tokens)

  def __reduce__(self):  # the compiled template does not pickle; Grain's workers need copies
    return ChatTemplate, (self.source, self.tokens)

  def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
             tools: list[dict] | None = None, documents: list[dict] | None = None,
             **kwargs: Any) -> str:
    """The conversation as the model saw it in training (+ the assistant's opening if asked)."""
    return self._template.render(messages=messages, tools=tools, documents=documents,
                                 add_generation_prompt=add_generation_prompt,
                                 **{**self.tokens, **kwargs})


def _source(folder: Path) -> str | None:
  """The template text of a tokenizer folder, or None."""
  jinja_file = folder / "chat_template.jinja"  # where transformers 5 saves it
  source = jinja_file.read_text() if jinja_file.is_file() else _config(folder).get("chat_template")
  if isinstance(source, list):  # named templates: [{'name': 'default', 'template': ...}, ...]
    source = {t.get("name"): t.get("template") for t in source}.get("default")
  return source or None


def has_chat_template(folder: str | Path) -> bool:
  """Whether a tokenizer folder holds a chat template."""
  return Path(folder).is_dir() and _source(Path(folder)) is not None


def load_chat_template(folder: str | Path) -> ChatTemplate:
  """The chat template of a Hugging Face tokenizer folder, or a one-line error if it has none."""
  folder = Path(folder)
  source = _source(folder)
  if not source:
    raise ValueError(f"{folder} has no chat template (chat_template.jinja, or chat_template in "
                     "tokenizer_config.json); use an instruction-tuned model's tokenizer folder.")
  return ChatTemplate(source, special_tokens(folder))
