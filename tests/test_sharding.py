"""The logical-axis -> mesh mapping, mesh sizes from config (one slice, and several with
stand-in TPU devices), and the fit checks that run before anything compiles (8 fake CPU
devices; only the grouped-query test compiles a model: one tiny forward pass)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import gpt_tiny
from lm_research import experiment, sharding
from lm_research.models import ModelConfig, build_model
from lm_research.optim import OptimConfig, make_optimizer

MODEL = ModelConfig(family="decoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                    d_ff=64, max_len=16)


# --- mesh sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes,devices,want", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((1, -1, 1), 8, (1, 8, 1)),
    ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 2, -1), 8, (1, 2, 4)),
    ((4, 1, 2), 8, (4, 1, 2)),
    ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_mesh_resolve_fills_minus_one(sizes, devices, want):
  """-1 becomes the devices the other axes leave; fixed sizes pass through."""
  assert sharding.MeshConfig(*sizes).resolve(devices) == want


@pytest.mark.parametrize("sizes,devices,message", [
    ((-1, -1, 1), 8, "Only one of mesh.data/fsdp/tensor may be -1"),
    ((3, -1, 1), 8, "does not divide the 8 devices"),
    ((2, 2, 1), 8, "mesh data*fsdp*tensor = 4 but there are 8 devices"),
    ((4, 4, 1), 8, "mesh data*fsdp*tensor = 16 but there are 8 devices"),
    ((0, -1, 1), 8, "must be positive or -1"),
    ((-2, 1, 1), 8, "must be positive or -1"),
])
def test_mesh_resolve_errors(sizes, devices, message):
  """Two -1s, sizes that do not divide or multiply to the device count: one-line errors."""
  with pytest.raises(ValueError) as info:
    sharding.MeshConfig(*sizes).resolve(devices)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_make_mesh_axes_and_devices():
  """The mesh has the three named axes over exactly the given devices."""
  mesh = sharding.make_mesh(sharding.MeshConfig(2, -1, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  small = sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:2])
  assert dict(small.shape) == {"data": 2, "fsdp": 1, "tensor": 1}
  assert {d.id for d in small.devices.flat} == {d.id for d in jax.devices()[:2]}


# --- multi-slice (hybrid) meshes --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakeTpu:
  """What mesh_utils reads of a TPU device: its slice, chip coordinates and kind."""
  id: int
  slice_index: int
  coords: tuple[int, int, int]
  core_on_chip: int = 0
  process_index: int = 0
  platform: str = "tpu"
  device_kind: str = "TPU v4"


def fake_slices(num_slices, chips=4, shuffle=False):
  """``num_slices`` slices of 2x2 chips (ids slice*4 + chip), optionally listed out of order."""
  devices = [FakeTpu(s * chips + c, s, (c % 2, c // 2, 0), process_index=s)
             for s in range(num_slices) for c in range(chips)]
  return devices[::-1] if shuffle else devices


def ids(grid):
  return np.vectorize(lambda d: d.id)(grid).tolist()


def test_hybrid_grid_tiles_slices_over_dcn_data():
  """2 slices with dcn_data=2: data rows 0-1 are slice 0 and rows 2-3 slice 1, each slice a
  2x2 (data, fsdp) block of its own chips; the order devices are listed in does not matter."""
  config = sharding.MeshConfig(data=-1, fsdp=2, dcn_data=2)
  for devices in (fake_slices(2), fake_slices(2, shuffle=True)):
    assert ids(sharding.hybrid_device_grid(config, devices)) == [
        [[0], [1]], [[2], [3]], [[4], [5]], [[6], [7]]]
  # make_mesh takes this path for devices on several slices (jax.make_mesh refuses them).
  mesh = sharding.make_mesh(config, fake_slices(2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert ids(mesh.devices) == [[[0], [1]], [[2], [3]], [[4], [5]], [[6], [7]]]


def test_hybrid_grid_tiles_slices_over_dcn_fsdp():
  """dcn_fsdp=2 with tensor=2 inside each slice: fsdp columns 0-1 are slice 0, 2-3 slice 1,
  and every tensor pair stays on one slice (ICI)."""
  grid = sharding.hybrid_device_grid(
      sharding.MeshConfig(data=1, fsdp=-1, tensor=2, dcn_fsdp=2), fake_slices(2))
  assert ids(grid) == [[[0, 1], [2, 3], [4, 5], [6, 7]]]


@pytest.mark.parametrize("config,devices,message", [
    (sharding.MeshConfig(), fake_slices(2),
     "mesh.dcn_data*mesh.dcn_fsdp = 1 but the devices span 2 slice(s); set them to multiply "
     "to 2 (e.g. --config.mesh.dcn_data=2)."),
    (sharding.MeshConfig(dcn_data=2, dcn_fsdp=2), fake_slices(2),
     "mesh.dcn_data*mesh.dcn_fsdp = 4 but the devices span 2 slice(s)"),
    (sharding.MeshConfig(dcn_data=0, dcn_fsdp=2), fake_slices(2),
     "mesh.dcn_data and mesh.dcn_fsdp must be positive, got (0, 2)."),
    (sharding.MeshConfig(data=3, fsdp=-1, dcn_data=2), fake_slices(2),
     "mesh (3, -1, 1) does not divide the 4 devices in each of 2 slices"),
    (sharding.MeshConfig(data=2, fsdp=4, dcn_data=2), fake_slices(2),
     "mesh data*fsdp*tensor = 8 but there are 4 devices in each of 2 slices"),
    (sharding.MeshConfig(dcn_data=2), fake_slices(2)[:7],
     "slices hold unequal device counts {0: 4, 1: 3}; run on whole slices of one type."),
])
def test_hybrid_grid_errors(config, devices, message):
  """DCN sizes that do not match the slices, ICI sizes that do not fit one slice, and ragged
  slices: one-line errors before any mesh exists."""
  with pytest.raises(ValueError) as info:
    sharding.hybrid_device_grid(config, devices)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_make_mesh_refuses_dcn_axes_on_one_slice():
  """The 8 CPU devices are one slice: asking for 2 slices over DCN is a config error."""
  with pytest.raises(ValueError, match=r"= 2 but the devices span 1 slice\(s\)"):
    sharding.make_mesh(sharding.MeshConfig(dcn_data=2))


# --- logical names -> PartitionSpec ----------------------------------------------------------

@pytest.mark.parametrize("names,want", [
    (("embed", "mlp"), P("fsdp", "tensor")),  # MLP wi
    (("mlp", "embed"), P("tensor", "fsdp")),  # MLP wo
    (("embed", "heads"), P("fsdp", "tensor")),  # q, k, v
    (("heads", "embed"), P("tensor", "fsdp")),  # attention out
    (("vocab", "embed"), P("tensor", "fsdp")),  # token embedding
    (("length", "embed"), P(None, "fsdp")),  # learned positions
    (("embed",), P("fsdp")),  # attention out bias
    (("norm",), P(None)),  # norm scale: replicated
    (("heads",), P("tensor")),  # q bias
    (("layers", "embed", "mlp"), P(None, "fsdp", "tensor")),  # scanned kernel
    (("embed", "kv"), P("fsdp", None)),
    ((None, "vocab"), P(None, "tensor")),
    (("batch", "length"), P(("data", "fsdp"), None)),
    # A mesh axis may shard one dimension only: batch took fsdp, so embed stays whole.
    (("batch", "length", "embed"), P(("data", "fsdp"), None, None)),
    (("vocab", "mlp"), P("tensor", None)),
])
def test_logical_to_spec_param_rules(names, want):
  """Parameters: embed -> fsdp, heads/mlp/vocab -> tensor, batch -> data x fsdp."""
  assert sharding.logical_to_spec(names) == want


@pytest.mark.parametrize("names,want", [
    (("batch", "length", "embed"), P(("data", "fsdp"), None, None)),
    (("batch", "length", "heads", "kv"), P(("data", "fsdp"), None, "tensor", None)),
    (("batch", "length", "mlp"), P(("data", "fsdp"), None, "tensor")),
    (("batch", "length", "vocab"), P(("data", "fsdp"), None, "tensor")),
])
def test_logical_to_spec_activation_rules(names, want):
  """Activations: batch over data x fsdp, model width whole, heads/mlp/vocab over tensor."""
  assert sharding.logical_to_spec(names, sharding.ACTIVATION_RULES) == want


def test_constrain_is_a_noop_without_mesh():
  """Outside active_mesh, constrain returns its input untouched (model code runs anywhere)."""
  x = jnp.ones((2, 3, 4))
  assert sharding.constrain(x, ("batch", "length", "embed")) is x


# --- batches ---------------------------------------------------------------------------------

def test_global_batch_splits_rows_over_data_and_fsdp():
  """Rows go over data x fsdp (4 ways here), every other dim whole; values are unchanged."""
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  host = {"ids": np.arange(8 * 5).reshape(8, 5), "labels": np.arange(8)}
  batch = sharding.global_batch(mesh, host)
  assert batch["ids"].addressable_shards[0].data.shape == (2, 5)
  assert batch["labels"].addressable_shards[0].data.shape == (2,)
  for name, value in host.items():
    np.testing.assert_array_equal(np.asarray(batch[name]), value)


# --- fit checks before compiling -------------------------------------------------------------

def check(mesh_sizes, batch=8, accum=1, **model):
  mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_sizes))
  sharding.check_divisibility(mesh, global_batch_size=batch, grad_accum_steps=accum,
                              model_cfg=MODEL.replace(**model))


@pytest.mark.parametrize("mesh_sizes,batch,accum,model,message", [
    ((8, 1, 1), 12, 1, {}, "microbatch of 12 rows does not split over mesh data*fsdp=8"),
    ((2, 4, 1), 4, 1, {}, "microbatch of 4 rows does not split over mesh data*fsdp=8"),
    ((8, 1, 1), 16, 4, {}, "microbatch of 4 rows does not split over mesh data*fsdp=8"),
    ((1, 1, 8), 8, 3, {}, "train.batch_size=8 is not divisible by train.grad_accum_steps=3"),
    ((1, 1, 8), 8, 1, {}, "model.num_heads=4 is not divisible by mesh.tensor=8"),
    ((1, 2, 4), 8, 1, dict(d_ff=66), "model.d_ff=66 is not divisible by mesh.tensor=4"),
    ((1, 2, 4), 8, 1, dict(vocab_size=66), "model.vocab_size=66 is not divisible by mesh.tensor=4"),
    ((1, 8, 1), 8, 1, dict(d_model=36, num_heads=4),
     "model.d_model=36 is not divisible by mesh.fsdp=8"),
])
def test_check_divisibility_errors(mesh_sizes, batch, accum, model, message):
  """Batches that do not split over data x fsdp and models that do not split over tensor or
  fsdp fail with one sentence naming the config keys."""
  with pytest.raises(ValueError) as info:
    check(mesh_sizes, batch, accum, **model)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_check_divisibility_accepts_fitting_setups():
  """Setups that do split pass silently (microbatches of 4 rows over data 2, heads over 4)."""
  check((2, 1, 4), batch=8, accum=2)
  check((1, 8, 1), batch=8)
  check((1, 1, 8), batch=8, num_heads=8)
  check((1, 2, 4), batch=8, num_heads=8, num_kv_heads=2)  # KV heads replicate instead


def test_make_experiment_rejects_misfit_before_compiling():
  """The same checks run inside make_experiment (tensor=8 with 4 heads)."""
  config = gpt_tiny.get_config()
  config.data.source = "synthetic"
  config.mesh.update(data=1, fsdp=1, tensor=8)
  config.model.num_heads = 4
  with pytest.raises(ValueError, match=r"model.num_heads=4 is not divisible by mesh.tensor=8"):
    experiment.make_experiment(config)


# --- parameter and optimizer-state shardings --------------------------------------------------

def abstract_params(cfg: ModelConfig):
  return nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)))[1]


def test_param_shardings_follow_logical_names():
  """Each parameter's NamedSharding is its logical names through PARAM_RULES."""
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  params = abstract_params(MODEL)
  shardings = sharding.param_shardings(mesh, params)
  by_path = {jax.tree_util.keystr(p): s
             for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
  block = "['stack']['layers']['blocks'][0]"
  want = {
      "['embeddings']['token']['embedding'].value": P("tensor", "fsdp"),
      "['embeddings']['position']['embedding'].value": P(None, "fsdp"),
      f"{block}['attn']['query']['kernel'].value": P("fsdp", "tensor"),
      f"{block}['attn']['out']['kernel'].value": P("tensor", "fsdp"),
      f"{block}['mlp']['wi']['kernel'].value": P("fsdp", "tensor"),
      f"{block}['mlp']['wo']['kernel'].value": P("tensor", "fsdp"),
      f"{block}['mlp']['wi']['bias'].value": P("tensor"),
      "['stack']['final_norm']['scale'].value": P(None),  # norms are replicated
  }
  for path, spec in want.items():
    assert by_path[path] == NamedSharding(mesh, spec), path
  assert len(by_path) == len(jax.tree.leaves(params))


def test_gqa_kv_heads_replicate_when_tensor_does_not_divide_them():
  """8 query heads and 2 KV heads over tensor=4: queries split 4 ways, keys/values are whole
  on every tensor device (with 4 KV heads they split too), and the sharded forward pass
  equals the one-device one."""
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 2, 4))
  block = "['stack']['layers']['blocks'][0]['attn']"

  def specs(cfg):
    shardings = sharding.param_shardings(mesh, abstract_params(cfg), cfg.kv_heads)
    return {jax.tree_util.keystr(p): s.spec
            for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
  gqa = MODEL.replace(num_heads=8, num_kv_heads=2)
  got = specs(gqa)
  assert got[f"{block}['query']['kernel'].value"] == P("fsdp", "tensor")
  for name in ("key", "value"):
    assert got[f"{block}['{name}']['kernel'].value"] == P("fsdp", None)
    assert got[f"{block}['{name}']['bias'].value"] == P(None)
  assert specs(gqa.replace(num_kv_heads=4))[f"{block}['key']['kernel'].value"] == P(
      "fsdp", "tensor")

  model = build_model(gqa, 0)
  ids = jax.random.randint(jax.random.key(1), (4, 16), 0, gqa.vocab_size)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x).logits)
  want = forward(state, ids)
  state = jax.device_put(state, sharding.param_shardings(mesh, state, gqa.kv_heads))
  with sharding.active_mesh(mesh):
    got = forward(state, ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_optimizer_state_shardings_mirror_params(optimizer):
  """Adam's moments get their parameter's sharding; Adafactor's factored row/column
  statistics and every counter are replicated, its unfactored ones mirror the parameter."""
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 2, 4))
  cfg = MODEL.replace(d_model=256, num_heads=4, d_ff=512)  # >= 128: Adafactor factors kernels
  params = abstract_params(cfg)
  param_sh = sharding.param_shardings(mesh, params)
  tx, _ = make_optimizer(OptimConfig(steps=10, learning_rate=1e-3, optimizer=optimizer))
  opt = jax.eval_shape(tx.init, params)
  opt_sh = sharding.matching_shardings(mesh, opt, params, param_sh)
  for leaf, s in zip(jax.tree.leaves(opt), jax.tree.leaves(opt_sh)):
    assert isinstance(s, NamedSharding) and s.mesh == mesh
    if leaf.ndim == 0:
      assert s.spec == P()
  get = optax.tree_utils.tree_get
  if optimizer == "adamw":
    for name in ("mu", "nu"):
      assert jax.tree.leaves(get(opt_sh, name)) == jax.tree.leaves(param_sh)
    return
  for name in ("v_row", "v_col"):
    assert {s.spec for s in jax.tree.leaves(get(opt_sh, name))} == {P()}
  kinds = set()
  for p, p_sh, v, v_sh in zip(jax.tree.leaves(params), jax.tree.leaves(param_sh),
                              jax.tree.leaves(get(opt, "v")), jax.tree.leaves(get(opt_sh, "v"))):
    if v.shape == p.shape:  # unfactored second moment (vectors): shaped like the parameter
      assert v_sh == p_sh
      kinds.add("mirrored")
    else:  # factored: a (1,) placeholder
      assert v.shape == (1,) and v_sh.spec == P()
      kinds.add("factored")
  assert kinds == {"mirrored", "factored"}
