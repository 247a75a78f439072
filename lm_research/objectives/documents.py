"""How each pretraining objective turns stored documents into examples and examples into rows.

One class per objective, built once per pipeline from the tokenizer, the row length and the
objective's options (``config.data`` keys listed in ``options``):
  ``__call__(text, doc_index, corpus, rng)``  one document's examples (numpy dicts);
  ``pack(ds, batch_size, mix)``               the example stream as rows of the batch format
                                              (objectives/registry.py), ``mix`` shuffling
                                              neighbouring examples or rows.
``corpus`` is the pipeline's view of the whole source: ``num_docs``, ``encode_lines(text)``
and ``other_document(i)`` (BERT's random next sentences come from other documents).
"""

from __future__ import annotations

from typing import Callable

import grain
import numpy as np

from lm_research.data import packing
from lm_research.objectives import causal_lm, masked_lm, span_corruption


class _Finalize(grain.transforms.Map):
  """Packer output -> the objective's batch format (a picklable wrapper of a function)."""

  def __init__(self, fn):
    self.fn = fn

  def map(self, element):
    return self.fn(element)


class CausalLmExamples:
  """GPT-2: each document as ``bos d`` -> ``d eos``, concatenated and split into rows."""

  options: tuple[str, ...] = ()

  def __init__(self, tokenizer, seq_len: int):
    self.seq_len = seq_len
    self.encode = tokenizer.encode
    self.eos_id = tokenizer.eos_id
    # A decoder vocabulary may have no bos (GPT-2's): eos then starts documents too.
    self.bos_id = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id

  def __call__(self, text: str, doc_index: int, corpus, rng: np.random.Generator) -> list[dict]:
    """The document's (input_ids, targets) pair."""
    del doc_index, corpus, rng
    return causal_lm.document_examples(self.encode(text), eos_id=self.eos_id, bos_id=self.bos_id)

  def pack(self, ds, batch_size: int, mix: Callable):
    """Concatenate-then-split rows, shuffled as rows so one long document fills no batch."""
    del batch_size
    ds = packing.concat_then_split(ds, {"input_ids": self.seq_len, "targets": self.seq_len})
    return mix(ds).map(_Finalize(causal_lm.finalize_packed))


class MlmNspExamples:
  """BERT: sentence pairs of a document (a random other document's for NSP negatives), masked."""

  options = ("short_seq_prob", "masked_lm_prob", "max_predictions_per_seq", "whole_word_mask")

  def __init__(self, tokenizer, seq_len: int, **options):
    self.builder = masked_lm.MlmNspBuilder(tokenizer, max_seq_len=seq_len, **options)

  def __call__(self, text: str, doc_index: int, corpus, rng: np.random.Generator) -> list[dict]:
    """The document's examples from its tokenized lines."""
    document = [ids for ids in corpus.encode_lines(text) if ids]
    return self.builder(document, doc_index, corpus.num_docs, corpus.other_document, rng)

  def pack(self, ds, batch_size: int, mix: Callable):
    """One example per row already; only mixed."""
    del batch_size
    return mix(ds)


class SpanCorruptionExamples:
  """T5: noise spans replaced by sentinels; pieces first-fit packed into rows."""

  options = ("noise_density", "mean_noise_span_length")

  def __init__(self, tokenizer, seq_len: int, **options):
    if len(getattr(tokenizer, "sentinel_ids", None) or []) == 0:
      raise ValueError("span_corruption needs a tokenizer with sentinel ids (<extra_id_N>).")
    self.encode = tokenizer.encode
    self.seq_len = seq_len
    self.builder = span_corruption.SpanCorruptionBuilder(tokenizer, input_length=seq_len,
                                                         **options)

  def __call__(self, text: str, doc_index: int, corpus, rng: np.random.Generator) -> list[dict]:
    """The document's corrupted pieces."""
    del doc_index, corpus
    return self.builder(self.encode(text), rng)

  def pack(self, ds, batch_size: int, mix: Callable):
    """Pieces mixed before packing (so rows mix documents), then first-fit packed."""
    ds = packing.first_fit(mix(ds), {"inputs": self.seq_len,
                                     "targets": self.builder.targets_length},
                           num_bins=max(batch_size, 8))
    return ds.map(_Finalize(span_corruption.finalize_packed))
