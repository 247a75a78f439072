"""Per-device memory of the FSDP-sharded GPT-2 small train step, from XLA's memory analysis of
the compiled step on 8 fake CPU devices: what pods rely on to fit a model."""

import math

import jax
import numpy as np
import pytest

from configs import gpt2_small
from lm_research import experiment, sharding
from lm_research.data import inputs
from lm_research.optim import make_optimizer

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow


def _bytes(leaves, per_device: bool) -> int:
  """Bytes of abstract arrays, whole or of one device's shard."""
  return sum(math.prod(x.sharding.shard_shape(x.shape) if per_device else x.shape)
             * _itemsize(x.dtype) for x in leaves)


def _itemsize(dtype) -> int:
  """Bytes per element; a PRNG key is its uint32 words."""
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return jax.random.key_data(jax.random.key(0)).nbytes
  return np.dtype(dtype).itemsize


def test_gpt2_small_fsdp8_state_is_an_eighth_per_device():
  """Parameters + Adam state per device (the compiled step's arguments less the batch) are
  1/8 of the whole state plus the replicated leaves (norms, tensor-axis biases, counters),
  which stay under 1% of it."""
  c = gpt2_small.get_config()
  c.data.source = "synthetic"
  c.train.update(batch_size=8, seq_len=128)
  c.mesh.update(data=1, fsdp=8, tensor=1)
  exp = experiment.make_experiment(c)
  tx, schedule = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh):
    graphdef, abstract_state, state_sh, _ = experiment.state_layout(exp, tx)
    train, _ = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
    host = next(inputs.make_batches(c, "decoder", "train", "", None))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=sharding.batch_sharding(exp.mesh, v.ndim))
             for k, v in host.items()}
    memory = train.lower(abstract_state, batch).compile().memory_analysis()
  leaves = jax.tree.leaves(abstract_state)
  whole = _bytes(leaves, per_device=False)
  replicated = _bytes([x for x in leaves if x.sharding.is_fully_replicated], per_device=False)
  per_device = memory.argument_size_in_bytes - _bytes(jax.tree.leaves(batch), per_device=True)
  print(f"gpt2_small, FSDP 8: state {whole / 2**20:.1f} MiB on one device, "
        f"{per_device / 2**20:.2f} MiB per device ({replicated / 2**20:.2f} MiB replicated); "
        f"step temporaries {memory.temp_size_in_bytes / 2**20:.0f} MiB per device")
  assert whole > 1.3e9  # 124M parameters and two Adam moments, float32
  assert per_device <= whole / 8 + replicated
  assert replicated < 0.01 * whole / 8
  norm_leaves = [x for path, x in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]
                 if "norm" in jax.tree_util.keystr(path)]
  assert norm_leaves and all(x.sharding.is_fully_replicated for x in norm_leaves)
