"""LoRA fine-tuning of an adapted model (``train.lora``; layers.LoRALinear holds the adapters).

What a LoRA run trains (``is_trainable``: adapters and the new task head), how its frozen base
is stored (``store_frozen``: train.lora.base_dtype, QLoRA-style bfloat16), how adapters fold
into the kernels they adapt (``merged`` / ``merge``: W + (alpha / rank) A B, what hf.save
writes), and the parameter counts a run logs (``summary``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from lm_research.models.config import LoRAConfig, ModelConfig
from lm_research.models.layers import LoRAParam
from lm_research.models.layout import flatten, get_params, set_params, unflatten
from lm_research.models.transformer import build_model

ADAPTERS = ("lora_a", "lora_b")
# The task head a fine-tune creates fresh (a classifier or tagger) trains with the adapters;
# every pretrained weight, LM heads included, stays frozen.
TRAINED_HEADS = ("classifier",)


def is_trainable(path: tuple, value: Any) -> bool:
  """nnx filter of the parameters a LoRA run trains: adapters and the task head."""
  return isinstance(value, LoRAParam) or (bool(path) and path[0] in TRAINED_HEADS)


def is_trained_name(path: tuple) -> bool:
  """``is_trainable`` for a plain parameter path (an adapter or the task head)."""
  return path[-1] in ADAPTERS or path[0] in TRAINED_HEADS


def trainable_filter(cfg: ModelConfig):
  """The filter of the parameters a run trains: ``is_trainable`` with LoRA, None (all) without."""
  return is_trainable if cfg.lora.rank else None


def split(params: nnx.State, trainable) -> tuple[nnx.State, nnx.State | None]:
  """(trained, frozen) parts of ``params``; (params, None) when ``trainable`` is None."""
  if trainable is None:
    return params, None
  return nnx.split_state(params, trainable, ...)


def join(trained: nnx.State, frozen: nnx.State | None) -> nnx.State:
  """Inverse of ``split``."""
  return trained if frozen is None else nnx.merge_state(trained, frozen)


def store_frozen(params: nnx.State, cfg: ModelConfig) -> nnx.State:
  """``params`` with the frozen floating-point weights cast to train.lora.base_dtype (if set)."""
  if not (cfg.lora.rank and cfg.lora.base_dtype):
    return params
  dtype = jnp.dtype(cfg.lora.base_dtype)
  trained, frozen = split(params, is_trainable)
  frozen = jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)
  return join(trained, frozen)


def merged(params: dict, lora: LoRAConfig) -> dict:
  """Plain parameters (either layout) with each adapter folded into its kernel, in float32:
  W + (alpha / rank) A B; the lora_a / lora_b leaves are dropped."""
  flat = flatten(params)
  out = {}
  for path, value in flat.items():
    if path[-1] in ADAPTERS:
      continue
    a = flat.get(path[:-1] + ("lora_a",))
    if path[-1] == "kernel" and a is not None:
      b = flat[path[:-1] + ("lora_b",)]
      delta = jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
      value = jnp.asarray(value, jnp.float32) + (lora.alpha / lora.rank) * delta
    out[path] = value
  return unflatten(out)


def merge(model: nnx.Module) -> nnx.Module:
  """The same model without adapters, its kernels holding them (the same outputs)."""
  cfg = model.cfg.replace(lora=LoRAConfig())
  base = build_model(cfg, 0)
  set_params(base, merged(get_params(model), model.cfg.lora))
  return base


def _count(tree: Any) -> tuple[int, int]:
  """(elements, bytes) of a tree's array leaves (concrete or abstract)."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype")]
  return (sum(int(np.prod(x.shape)) for x in leaves),
          sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in leaves))


def log_summary(params: nnx.State, opt_state: Any, trainable) -> str:
  """Logs (and returns) 'parameters: total N, trained M (x%); optimizer state B bytes'."""
  total, _ = _count(params)
  trained, _ = _count(split(params, trainable)[0])
  _, opt_bytes = _count(opt_state)
  share = 100 * trained / max(total, 1)
  line = (f"parameters: total {total:,}, trained {trained:,} ({share:.2f}%); optimizer state "
          f"{opt_bytes:,} bytes")
  logging.info("%s", line)
  return line
