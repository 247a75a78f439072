"""The Hugging Face model types hf.load and hf.save know: one module each."""

from __future__ import annotations

from typing import Any

from lm_research.interop import bert, gpt2, llama, t5
from lm_research.interop.family import HFFamily
from lm_research.models.config import ModelConfig

FAMILIES: dict[str, HFFamily] = {
    fam.model_type: fam
    for fam in (bert.FAMILY, gpt2.FAMILY, t5.FAMILY, llama.LLAMA, llama.QWEN2, llama.MISTRAL)}


def model_type_of(hf: dict[str, Any]) -> str | None:
  """config.json's model_type, or a guess from its keys (some old BERT uploads omit it)."""
  if hf.get("model_type"):
    return hf["model_type"]
  return next((t for t, fam in FAMILIES.items() if fam.looks_like(hf)), None)


def for_saving(cfg: ModelConfig, model_type: str | None = None) -> HFFamily:
  """The HF type hf.save writes ``cfg`` as: ``model_type`` if given, else the one whose
  ``accepts`` claims the config, else its family's default (GPT-2 for other decoders)."""
  same = [fam for fam in FAMILIES.values() if fam.family == cfg.family]
  if model_type is not None:
    if model_type not in {fam.model_type for fam in same}:
      raise ValueError(f"Cannot save a model.family={cfg.family!r} model as model_type="
                       f"{model_type!r}; use one of {', '.join(f.model_type for f in same)}.")
    return FAMILIES[model_type]
  claimed = [fam for fam in same if fam.accepts is not None and fam.accepts(cfg)]
  default = [fam for fam in same if fam.accepts is None]
  if not claimed + default:
    raise ValueError(f"Cannot save model.family={cfg.family!r} as a Hugging Face checkpoint; "
                     "save a native checkpoint instead.")
  return (claimed + default)[0]
