"""``generate``: validate, then run one compiled search per (model structure, config, mesh).

The compiled function is cached: ``jax.jit`` keys its traces on argument shapes, and one jitted
function is kept per model graph (``nnx.GraphDef``, equal for models of the same config),
``DecodeConfig`` and active mesh. A second call with the same shapes reuses the executable.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm_research import sharding
from lm_research.decoding import search, steppers
from lm_research.decoding.config import DecodeConfig, DecodeOutput

# Extra XLA compiler options for every search (None: XLA's defaults). The tests set cheaper
# ones: on a small CPU their tiny models take far longer to compile than to run.
COMPILER_OPTIONS: dict[str, Any] | None = None

_traces = 0  # incremented each time the search is traced (tests check for recompiles)


def trace_count() -> int:
  """How many times ``generate`` has traced (and so compiled) a search in this process."""
  return _traces


def generate(model: nnx.Module, input_ids, attention_mask, cfg: DecodeConfig,
             rng: jax.Array | None = None) -> DecodeOutput:
  """Continues each right-padded prompt (decoder) or decodes from ``pad_id`` (T5) per ``cfg``.

  ``input_ids`` and ``attention_mask`` are int (B, T), 1s then 0s in each mask row (None: no
  padding); ``rng`` is a jax.random key, needed only when sampling.
  """
  fn, args = prepare(model, input_ids, attention_mask, cfg, rng)
  return fn(*args)


def prepare(model: nnx.Module, input_ids, attention_mask, cfg: DecodeConfig,
            rng: jax.Array | None = None) -> tuple[Callable[..., DecodeOutput], tuple]:
  """The jitted search and its arguments: ``fn(*args)`` is ``generate`` (benchmarks lower it)."""
  ids_BT = jnp.asarray(input_ids, jnp.int32)
  mask_BT = (jnp.ones_like(ids_BT) if attention_mask is None
             else jnp.asarray(attention_mask, jnp.int32))
  _check(model, ids_BT, mask_BT, cfg)
  if rng is None:
    if cfg.samples:
      raise ValueError("DecodeConfig(strategy='sample') with temperature > 0 needs an rng "
                       "(a jax.random key).")
    rng = jax.random.key(0)  # unused by greedy and beam search; keeps one signature
  graphdef, state = nnx.split(model)
  # constrain() reads the active mesh while tracing, so the mesh is part of the cache key.
  mesh = sharding.current_mesh()
  options = tuple(sorted((COMPILER_OPTIONS or {}).items()))
  return _jitted(graphdef, cfg, mesh, options), (state, ids_BT, mask_BT, rng)


@functools.lru_cache(maxsize=64)
def _jitted(graphdef: Any, cfg: DecodeConfig, mesh: Any,
            options: tuple) -> Callable[..., DecodeOutput]:
  del mesh  # only a cache key: tracing happens inside the caller's active_mesh

  def run(state, ids_BT, mask_BT, rng) -> DecodeOutput:
    global _traces
    _traces += 1
    model = nnx.merge(graphdef, state)
    stepper = steppers.make_stepper(model, cfg)
    if cfg.strategy == "beam":
      return search.beam_search(stepper, ids_BT, mask_BT, cfg)
    return search.sample(stepper, ids_BT, mask_BT, cfg, rng)

  return jax.jit(run, compiler_options=dict(options) or None)


def _check(model: nnx.Module, ids_BT, mask_BT, cfg: DecodeConfig) -> None:
  """One-line errors for a model or inputs that cannot be decoded, before any compiling."""
  mcfg = getattr(model, "cfg", None)
  if mcfg is None or mcfg.family not in ("decoder", "encoder_decoder") or mcfg.head != "lm":
    raise ValueError("generate needs a decoder with head='lm' or an encoder_decoder (T5) model "
                     "from models.build_model.")
  if ids_BT.ndim != 2 or mask_BT.shape != ids_BT.shape:
    raise ValueError(f"input_ids and attention_mask must both be (batch, length), got "
                     f"{ids_BT.shape} and {mask_BT.shape}.")
  t, n = ids_BT.shape[1], cfg.max_new_tokens
  if mcfg.family == "decoder":
    if np.asarray(mask_BT).sum(axis=1).min() < 1:
      raise ValueError("Every decoder prompt needs at least one token (attention_mask row of "
                       "all zeros).")
    if mcfg.position == "learned" and t + n > mcfg.max_len:
      raise ValueError(
          f"Prompt length {t} + max_new_tokens {n} = {t + n} exceeds model.max_len="
          f"{mcfg.max_len} (learned positions); shorten the prompt or max_new_tokens.")
  elif mcfg.position == "learned" and max(t, n + 1) > mcfg.max_len:
    raise ValueError(
        f"Input length {t} or max_new_tokens {n} + 1 exceeds model.max_len={mcfg.max_len} "
        "(learned positions); shorten them.")
