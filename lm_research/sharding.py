"""The one module that knows mesh axis names: logical axes -> ('data', 'fsdp', 'tensor').

Model code names logical axes only (glossary below). This module maps them onto a device
mesh, builds the mesh from config, and constrains activations when a mesh is active. When the
devices span several TPU slices, the data and fsdp axes also cross slices (over the slower
data-center network, DCN): mesh.dcn_data x mesh.dcn_fsdp slices, each holding a
data x fsdp x tensor block of its own chips.

Logical axes:
  batch   examples in a batch            -> data x fsdp
  length  sequence positions              -> not sharded
  embed   model width (d_model)           -> fsdp (parameters) / not sharded (activations)
  mlp     feed-forward width (d_ff)       -> tensor
  heads   attention heads (x head_dim)    -> tensor
  kv_heads  key/value heads (x head_dim)  -> tensor when mesh.tensor divides their count,
          else replicated (grouped-query attention with fewer KV heads than mesh.tensor)
  kv      per-head width                  -> not sharded
  vocab   vocabulary                      -> tensor
  layers  stacked layers (scan)           -> not sharded
  norm    a norm's scale and bias (d_model) -> not sharded
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters: FSDP shards the model width; tensor parallelism shards heads, MLP and vocab.
PARAM_RULES: dict[str, Any] = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",  # param_shardings replicates them when they do not divide
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
  """Axis sizes within a slice (one may be -1: all remaining devices), and slices per axis."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  # Slices along data and fsdp; their product is the slice count (1 on a single slice).
  dcn_data: int = 1
  dcn_fsdp: int = 1

  def resolve(self, num_devices: int, num_slices: int = 1) -> tuple[int, int, int]:
    """Concrete per-slice axis sizes, or raises a one-line error if they cannot fit."""
    self.dcn_shape(num_slices)
    where = (f"{num_devices} devices" if num_slices == 1 else
             f"{num_devices // num_slices} devices in each of {num_slices} slices")
    num_devices //= num_slices
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"Only one of mesh.data/fsdp/tensor may be -1, got {tuple(sizes)}.")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"Mesh sizes must be positive or -1, got {tuple(sizes)}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(
            f"mesh {tuple(sizes)} does not divide the {where}: the fixed axes "
            f"multiply to {known}; pick sizes whose product divides {num_devices}.")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh data*fsdp*tensor = {math.prod(sizes)} but there are {where}; "
          "set the sizes so they multiply to the device count (or use -1 for one axis).")
    return tuple(sizes)  # type: ignore[return-value]

  def dcn_shape(self, num_slices: int) -> tuple[int, int, int]:
    """Slices along (data, fsdp, tensor), or a one-line error if they do not match the slices."""
    dcn = (self.dcn_data, self.dcn_fsdp)
    if any(s < 1 for s in dcn):
      raise ValueError(f"mesh.dcn_data and mesh.dcn_fsdp must be positive, got {dcn}.")
    if math.prod(dcn) != num_slices:
      raise ValueError(
          f"mesh.dcn_data*mesh.dcn_fsdp = {math.prod(dcn)} but the devices span {num_slices} "
          f"slice(s); set them to multiply to {num_slices} (e.g. "
          f"--config.mesh.dcn_data={num_slices}).")
    return (*dcn, 1)


def _slice_of(device: Any) -> int:
  # TPU devices (and GPUs in jax >= 0.5) carry slice_index; a device without one is one slice.
  return getattr(device, "slice_index", 0)


def hybrid_device_grid(config: MeshConfig, devices: Sequence[Any]) -> np.ndarray:
  """Devices as a (data, fsdp, tensor) array: each slice a block, slices tiled over DCN axes."""
  per_slice = collections.Counter(_slice_of(d) for d in devices)
  if len(set(per_slice.values())) > 1:
    raise ValueError(f"slices hold unequal device counts {dict(sorted(per_slice.items()))}; "
                     "run on whole slices of one type.")
  ici = config.resolve(len(devices), len(per_slice))
  return mesh_utils.create_hybrid_device_mesh(ici, config.dcn_shape(len(per_slice)), devices)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  # Auto axes: shardings come from jit in/out shardings and constraints, not from types.
  axis_types = (jax.sharding.AxisType.Auto,) * 3
  if len({_slice_of(d) for d in devices}) == 1 and (config.dcn_data, config.dcn_fsdp) == (1, 1):
    return jax.make_mesh(config.resolve(len(devices)), MESH_AXES, axis_types=axis_types,
                         devices=devices)
  # jax.make_mesh refuses devices from several slices: tile per-slice meshes over DCN instead.
  return Mesh(hybrid_device_grid(config, devices), MESH_AXES, axis_types=axis_types)


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


def param_shardings(mesh: Mesh, abstract_params: Any, kv_heads: int | None = None) -> Any:
  """NamedSharding for every parameter leaf, from the logical names it was created with.

  ``kv_heads``: the model's key/value head count; when mesh.tensor does not divide it, the
  key/value projections are replicated over tensor (each device holds every KV head) rather
  than split inside a head.
  """
  from flax import nnx  # noqa: PLC0415  (keeps this module importable without flax)
  rules = PARAM_RULES
  if kv_heads is not None and kv_heads % mesh.shape["tensor"]:
    rules = dict(PARAM_RULES, kv_heads=None)
  specs = nnx.get_partition_spec(abstract_params)
  return jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules)),
                      specs, is_leaf=lambda x: isinstance(x, P))


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
  # Not model.num_kv_heads: key/value heads that do not split are replicated (param_shardings).
  checks = {"model.num_heads": model_cfg.num_heads, "model.d_ff": model_cfg.d_ff,
            "model.vocab_size": model_cfg.vocab_size}
  for name, size in checks.items():
    if size % tensor:
      raise ValueError(f"{name}={size} is not divisible by mesh.tensor={tensor}; choose a "
                       "tensor-parallel size that divides the heads, d_ff and vocabulary.")
  if model_cfg.d_model % fsdp:
    raise ValueError(f"model.d_model={model_cfg.d_model} is not divisible by mesh.fsdp={fsdp}.")
