"""Autoregressive decoding (greedy, sampling, beam search) with a KV cache, for the decoder and
encoder-decoder families.

  from lm_research import decoding
  out = decoding.generate(model, input_ids, attention_mask,
                          decoding.DecodeConfig(max_new_tokens=32, strategy="greedy"))
  out.tokens, out.lengths, out.scores
A row ends at ``eos_id``, or at any of several (``eos_id=[128001, 128009]``, as Llama 3's
generation_config.json lists them).
"""

from lm_research.decoding.api import generate, prepare, trace_count
from lm_research.decoding.config import DecodeConfig, DecodeOutput

__all__ = ["DecodeConfig", "DecodeOutput", "generate", "prepare", "trace_count"]
