"""The Hugging Face model types hf.load and hf.save know: one module each."""

from __future__ import annotations

from typing import Any

from lm_research.interop import bert, gpt2, t5
from lm_research.interop.family import HFFamily

FAMILIES: dict[str, HFFamily] = {m.FAMILY.model_type: m.FAMILY for m in (bert, gpt2, t5)}
BY_OUR_FAMILY: dict[str, HFFamily] = {fam.family: fam for fam in FAMILIES.values()}


def model_type_of(hf: dict[str, Any]) -> str | None:
  """config.json's model_type, or a guess from its keys (some old BERT uploads omit it)."""
  if hf.get("model_type"):
    return hf["model_type"]
  return next((t for t, fam in FAMILIES.items() if fam.looks_like(hf)), None)
