"""What every Hugging Face family module (bert.py, gpt2.py, t5.py, llama.py) declares, and shared
pieces.

A family module builds one ``HFFamily``: how its config.json maps to our ModelConfig and back,
and a table of ``Entry`` rows, one per parameter, saying which checkpoint tensor holds it and
how the tensor is laid out. ``hf.py`` does the files, checks and warnings for every family
alike, so adding a family is adding a module and naming it in ``families.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from lm_research.models.config import ModelConfig

# HF activation names -> ours; gelu_fast and gelu_pytorch_tanh are gelu_new's tanh formula.
ACT_FROM_HF = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
HEAD_PARAMS = ("mlm", "nsp", "classifier", "pooler", "lm_head")  # may start fresh; the body may not


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: our path (loop layout) <-> a checkpoint tensor, and the layout change.

  ``keys``: checkpoint names, the first one present is read and ``keys[0]`` is written; no key
  means HF has no such tensor (it must be zeros: GPT-2's classifier has no bias).
  """

  ours: tuple
  keys: tuple[str, ...]
  transpose: bool = False  # a torch Linear weight is (out, in); our kernels are (in, out)
  fused_third: int | None = None  # q, k or v (0, 1, 2) of a fused (in, 3 * out) projection
  rescale: bool = False  # times d_model ** -0.5: a T5 LM head that HF rescales but does not tie

  def to_ours(self, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The checkpoint tensor ``x`` as our parameter, in its stored dtype: a view of the
    memory-mapped file where possible, cast only when placed on devices (shard by shard)."""
    x = np.asarray(x)
    if self.fused_third is not None and x.shape[-1] % 3 == 0:
      third = x.shape[-1] // 3
      x = x[..., self.fused_third * third:(self.fused_third + 1) * third]
    if self.transpose:
      x = x.T
    return x.astype(np.float32) * np.float32(cfg.d_model ** -0.5) if self.rescale else x

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """Our parameter as the checkpoint stores it (fused thirds are joined by the caller)."""
    value = np.asarray(value, np.float32)
    return value.T if self.transpose else value


def linear(ours: tuple, key: str, bias: bool = True, transpose: bool = True) -> list[Entry]:
  """A dense layer's kernel (and bias) under HF's ``key.weight`` / ``key.bias``."""
  out = [Entry(ours + ("kernel",), (key + ".weight",), transpose=transpose)]
  return out + [Entry(ours + ("bias",), (key + ".bias",))] if bias else out


def norm(ours: tuple, key: str, bias: bool = True) -> list[Entry]:
  """A norm's scale (and bias) under HF's ``key.weight`` / ``key.bias``."""
  out = [Entry(ours + ("scale",), (key + ".weight",))]
  return out + [Entry(ours + ("bias",), (key + ".bias",))] if bias else out


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
  """Whether two stored tensors are one tied weight (allowing copies saved in other precisions)."""
  if a is None or b is None or a.shape != b.shape:
    return False
  return bool(np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2,
                          atol=1e-3))


def activation(name: str, where: str) -> str:
  """Our activation name for an HF one, or a one-line error."""
  if name not in ACT_FROM_HF:
    raise ValueError(f"config.json {where}={name!r} is not supported; use one of "
                     f"{', '.join(sorted(ACT_FROM_HF))}.")
  return ACT_FROM_HF[name]


def reject(condition: bool, text: str) -> None:
  """A one-line error about a config.json field that we cannot represent."""
  if condition:
    raise ValueError(f"config.json {text}")


def num_labels(hf: dict[str, Any]) -> int:
  """The classifier width config.json gives (id2label, else num_labels, else 2)."""
  return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def check_savable(model_type: str, problems: list[tuple[bool, str]]) -> None:
  """A one-line error naming the first ModelConfig field the HF family cannot represent."""
  for bad, what in problems:
    if bad:
      raise ValueError(f"Cannot save as a Hugging Face {model_type} checkpoint: model.{what} has "
                       f"no {model_type} equivalent; save a native checkpoint instead.")


def common_problems(cfg: ModelConfig) -> list[tuple[bool, str]]:
  """ModelConfig choices none of the families' HF classes can hold."""
  return [(cfg.kv_heads != cfg.num_heads, f"num_kv_heads={cfg.num_kv_heads}"),
          (cfg.pooling != "cls", f"pooling={cfg.pooling!r}")]


def base_hf_config(model_type: str, archs: dict[str, str], cfg: ModelConfig) -> dict[str, Any]:
  """The config.json fields every family writes: type, architecture, vocabulary, labels."""
  by_head = {head: arch for arch, head in archs.items()}
  hf = {"model_type": model_type, "architectures": [by_head[cfg.head]],
        "vocab_size": cfg.vocab_size, "initializer_range": cfg.initializer_range}
  if cfg.head in ("sequence_classification", "token_classification"):
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  return hf


def no_fixups(tensors: dict[str, np.ndarray], cfg: ModelConfig, arch: str) -> dict:
  """Saved tensors as they are (families without save-time special cases)."""
  del cfg, arch
  return tensors


@dataclasses.dataclass(frozen=True)
class HFFamily:
  """One Hugging Face model type: config and weight-name mapping in both directions."""

  model_type: str  # config.json's model_type
  family: str  # our ModelConfig.family
  archs: dict[str, str]  # HF architecture class -> our head
  prefix: str  # the base-model prefix HF adds under a head class ('bert.')
  roots: tuple[str, ...]  # first key parts that mean a base model saved without the prefix
  looks_like: Callable[[dict], bool]  # guesses the type of a config.json without model_type
  config_from_hf: Callable[[dict, dict, str], ModelConfig]  # (config.json, tensors, head)
  config_to_hf: Callable[[ModelConfig], dict]  # config.json; one-line error if impossible
  entries: Callable[..., list[Entry]]  # (cfg, rescaled_lm_head=False) -> every parameter
  head_from_weights: Callable[[dict], str]  # the head when architectures is absent
  tied_aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # stored tie copies
  strict_ties: bool = False  # an alias that differs from its source is an error, not ignored
  lm_tie_source: str | None = None  # the embedding an LM head copy may duplicate
  rescaled_lm_head: Callable[[dict, dict], bool] = lambda hf, tensors: False
  fix_tensors: Callable[[dict], dict] = lambda tensors: tensors  # old spellings, on load
  save_fixups: Callable[[dict, ModelConfig, str], dict] = no_fixups  # class quirks, on save
  # Which of our configs hf.save writes as this type (Llama vs GPT-2 for a decoder); None:
  # every config of ``family`` that no other type's ``accepts`` claims.
  accepts: Callable[[ModelConfig], bool] | None = None

  def heads(self) -> list[str]:
    """Our head names this family has an HF class for."""
    return sorted(set(self.archs.values()))
