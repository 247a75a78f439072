"""Parameters as plain nested dicts, in the per-layer ("loop") layout whatever the model uses.

A scanned model stores each stack's blocks stacked on a leading 'layers' axis
(``...blocks.{kernel: (L, ...)}``); a looped one stores ``...blocks.{0: ..., 1: ...}``.
Checkpoint converters and tests speak the loop layout, and these helpers translate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BLOCKS = "blocks"


def stack_layers(tree: Any) -> Any:
  """Loop layout -> scan layout: ``blocks.{i: subtree}`` becomes one stacked subtree."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == BLOCKS and isinstance(value, dict) and all(isinstance(k, int) for k in value):
      layers = [stack_layers(value[i]) for i in range(len(value))]
      out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    else:
      out[key] = stack_layers(value)
  return out


def unstack_layers(tree: Any) -> Any:
  """Scan layout -> loop layout: a stacked ``blocks`` subtree becomes ``{i: subtree}``."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == BLOCKS and isinstance(value, dict) and not all(isinstance(k, int) for k in value):
      num_layers = jax.tree.leaves(value)[0].shape[0]
      out[key] = {i: jax.tree.map(lambda x, i=i: x[i], value) for i in range(num_layers)}
    else:
      out[key] = unstack_layers(value)
  return out


def get_params(model: nnx.Module) -> dict:
  """The model's parameters as a nested dict of arrays in the loop layout."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return unstack_layers(params) if model.cfg.scan_layers else params


def set_params(model: nnx.Module, params: dict) -> None:
  """Writes loop-layout ``params`` into ``model`` (stacking them if it scans), checking shapes."""
  if model.cfg.scan_layers:
    params = stack_layers(params)
  state = nnx.state(model, nnx.Param)
  expected = nnx.to_pure_dict(state)
  flat_expected = flatten(expected)
  flat_given = flatten(params)
  missing = sorted(set(flat_expected) - set(flat_given))
  unexpected = sorted(set(flat_given) - set(flat_expected))
  if missing or unexpected:
    raise ValueError(f"Parameter names differ: missing {missing[:5]}, unexpected {unexpected[:5]}.")
  for path, value in flat_given.items():
    if tuple(np.shape(value)) != tuple(np.shape(flat_expected[path])):
      raise ValueError(f"Parameter {'.'.join(map(str, path))} has shape {np.shape(value)}, "
                       f"the model expects {np.shape(flat_expected[path])}.")
  params = jax.tree.map(lambda v, e: jnp.asarray(v, dtype=e.dtype), params, expected)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)


def flatten(tree: Any, prefix: tuple = ()) -> dict[tuple, Any]:
  """{path tuple: leaf} of a nested dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, prefix + (key,)))
  return out


def unflatten(flat: dict[tuple, Any]) -> dict:
  """Inverse of ``flatten``."""
  out: dict = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out
