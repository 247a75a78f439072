"""The one module that knows mesh axis names: logical axes -> ('data', 'fsdp', 'tensor').

Model code names logical axes only (glossary below). This module maps them onto a device
mesh, builds the mesh from config, and constrains activations when a mesh is active.

Logical axes:
  batch   examples in a batch            -> data x fsdp
  length  sequence positions              -> not sharded
  embed   model width (d_model)           -> fsdp (parameters) / not sharded (activations)
  mlp     feed-forward width (d_ff)       -> tensor
  heads   attention heads (x head_dim)    -> tensor
  kv      per-head width                  -> not sharded
  vocab   vocabulary                      -> tensor
  layers  stacked layers (scan)           -> not sharded
  norm    a norm's scale and bias (d_model) -> not sharded
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters: FSDP shards the model width; tensor parallelism shards heads, MLP and vocab.
PARAM_RULES: dict[str, Any] = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "vocab": "tensor",
    "kv": None,
    "length": None,
    "layers": None,
    # Norm scales and biases are replicated: d_model floats each, where sharding them costs
    # an all-gather per norm per step.
    "norm": None,
    "batch": ("data", "fsdp"),
}
# Activations: batch over data x fsdp; the model width stays whole on each device.
ACTIVATION_RULES: dict[str, Any] = dict(PARAM_RULES, embed=None)

_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("mesh", default=None)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the three mesh axes; one may be -1 (all remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Returns concrete axis sizes, or raises a one-line error if they cannot fit."""
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"Only one of mesh.data/fsdp/tensor may be -1, got {tuple(sizes)}.")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"Mesh sizes must be positive or -1, got {tuple(sizes)}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(
            f"mesh {tuple(sizes)} does not divide the {num_devices} devices: the fixed axes "
            f"multiply to {known}; pick sizes whose product divides {num_devices}.")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices; "
          "set the sizes so they multiply to the device count (or use -1 for one axis).")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = config.resolve(len(devices))
  # Auto axes: shardings come from jit in/out shardings and constraints, not from types.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: dict[str, Any] = PARAM_RULES) -> P:
  """Turns a tuple of logical axis names into a PartitionSpec over mesh axes."""
  used: set[str] = set()
  spec = []
  for name in names:
    axis = rules.get(name) if name is not None else None
    axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
    axes = tuple(a for a in axes if a not in used)  # a mesh axis may appear once per array
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


@contextlib.contextmanager
def active_mesh(mesh: Mesh) -> Iterator[Mesh]:
  """Makes ``constrain`` place activations on this mesh while tracing a step."""
  token = _ACTIVE_MESH.set(mesh)
  try:
    yield mesh
  finally:
    _ACTIVE_MESH.reset(token)


def current_mesh() -> Mesh | None:
  """The mesh of the enclosing ``active_mesh``, or None."""
  return _ACTIVE_MESH.get()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op with no active mesh."""
  mesh = current_mesh()
  if mesh is None:
    return x
  spec = logical_to_spec(names, ACTIVATION_RULES)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_shardings(mesh: Mesh, abstract_params: Any) -> Any:
  """NamedSharding for every parameter leaf, from the logical names it was created with."""
  from flax import nnx  # noqa: PLC0415  (keeps this module importable without flax)
  specs = nnx.get_partition_spec(abstract_params)
  return jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec))), specs,
                      is_leaf=lambda x: isinstance(x, P))


def matching_shardings(mesh: Mesh, tree: Any, params: Any, shardings: Any) -> Any:
  """Shardings for a tree whose leaves mirror parameters (e.g. Adam moments); else replicated.

  A leaf gets a parameter's sharding when its key path ends with that parameter's path and
  the shapes agree; counters and factored Adafactor statistics are replicated.
  """
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                    jax.tree.leaves(shardings)):
    by_path[tuple(map(str, path))] = (leaf.shape, sharding)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    keys = tuple(map(str, path))
    for start in range(len(keys)):
      shape, sharding = by_path.get(keys[start:], (None, None))
      if shape is not None and shape == leaf.shape:
        return sharding
    return replicated
  return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Rows over data x fsdp, everything else whole."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def global_batch(mesh: Mesh, host_batch: dict) -> dict:
  """Turns this process's rows into global jax.Arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
          for k, v in host_batch.items()}


def check_divisibility(mesh: Mesh, *, global_batch_size: int, grad_accum_steps: int,
                       model_cfg: Any) -> None:
  """One-line errors, before compiling, for a mesh that cannot split the batch or the model."""
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = global_batch_size // max(grad_accum_steps, 1)
  if global_batch_size % grad_accum_steps:
    raise ValueError(f"train.batch_size={global_batch_size} is not divisible by "
                     f"train.grad_accum_steps={grad_accum_steps}.")
  if micro % rows:
    raise ValueError(
        f"The microbatch of {micro} rows does not split over mesh data*fsdp={rows}; make "
        "train.batch_size / train.grad_accum_steps a multiple of mesh.data * mesh.fsdp.")
  tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
  checks = {"model.num_heads": model_cfg.num_heads, "model.num_kv_heads": model_cfg.kv_heads,
            "model.d_ff": model_cfg.d_ff, "model.vocab_size": model_cfg.vocab_size}
  for name, size in checks.items():
    if size % tensor:
      raise ValueError(f"{name}={size} is not divisible by mesh.tensor={tensor}; choose a "
                       "tensor-parallel size that divides the heads, d_ff and vocabulary.")
  if model_cfg.d_model % fsdp:
    raise ValueError(f"model.d_model={model_cfg.d_model} is not divisible by mesh.fsdp={fsdp}.")
