"""What to generate and how (``DecodeConfig``), and what comes back (``DecodeOutput``)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding options; frozen and hashable, so a config is a static argument under jit."""

  max_new_tokens: int = 32
  strategy: str = "greedy"  # 'greedy' | 'sample' | 'beam'
  temperature: float = 1.0  # sampling; 0 = argmax
  top_k: int = 0  # sampling: keep the k most likely tokens; 0 = off
  top_p: float = 1.0  # sampling: keep the smallest set with this much probability; 1.0 = off
  num_beams: int = 4  # beam search width
  length_penalty: float = 1.0  # beam search: rank finished hypotheses by score / len**alpha
  # The id (or ids: Llama 3 and Qwen2 instruct models end a turn with any of several) that
  # ends a row; a negative id never matches: always generate max_new_tokens.
  eos_id: int | tuple[int, ...] = 1
  pad_id: int = 0  # fills the tokens after EOS; T5's decoder start token
  use_cache: bool = True  # False: recompute the whole sequence every step (the reference)

  def __post_init__(self):
    # A list (generation_config.json's) becomes a hashable tuple without repeats; one id an int.
    ids = tuple(dict.fromkeys(int(i) for i in (
        self.eos_id if isinstance(self.eos_id, (list, tuple)) else [self.eos_id])))
    if not ids:
      raise ValueError("DecodeConfig.eos_id is an empty list; give at least one id (or -1).")
    object.__setattr__(self, "eos_id", ids[0] if len(ids) == 1 else ids)
    if self.strategy not in STRATEGIES:
      raise ValueError(f"DecodeConfig.strategy={self.strategy!r} is not one of "
                       f"{', '.join(STRATEGIES)}.")
    if self.max_new_tokens < 1:
      raise ValueError(f"DecodeConfig.max_new_tokens must be at least 1, got "
                       f"{self.max_new_tokens}.")
    if self.temperature < 0:
      raise ValueError(f"DecodeConfig.temperature must be >= 0, got {self.temperature}.")
    if self.top_k < 0:
      raise ValueError(f"DecodeConfig.top_k must be >= 0 (0 = off), got {self.top_k}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"DecodeConfig.top_p must be in (0, 1] (1 = off), got {self.top_p}.")
    if self.num_beams < 1:
      raise ValueError(f"DecodeConfig.num_beams must be at least 1, got {self.num_beams}.")

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Every id that ends a row."""
    return (self.eos_id,) if isinstance(self.eos_id, int) else self.eos_id

  def is_eos(self, token: jax.Array) -> jax.Array:
    """Whether each token ends its row (any of ``eos_ids``)."""
    return jnp.isin(token, jnp.asarray(self.eos_ids, token.dtype))

  @property
  def samples(self) -> bool:
    """Whether decoding draws random numbers (and so needs an rng)."""
    return self.strategy == "sample" and self.temperature > 0


@struct.dataclass
class DecodeOutput:
  """Generated tokens only (pad after EOS, EOS kept), their count and their score per row."""

  tokens: jax.Array  # int32 (B, max_new_tokens)
  lengths: jax.Array  # int32 (B,): generated tokens including EOS
  scores: jax.Array  # float32 (B,): sum of log-probs; beam: the length-penalised best score
