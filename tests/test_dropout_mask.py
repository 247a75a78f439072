"""Dropout masks: the written-out Threefry against JAX's own, and the masks' statistics."""

import re

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest

from lm_research.models import dropout_mask


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
def test_threefry_matches_jax(seed):
  key = jax.random.key_data(jax.random.key(seed))
  counters = jax.random.bits(jax.random.key(seed + 1), (2, 500), jnp.uint32)
  y1, y2 = dropout_mask.threefry2x32(key[0], key[1], counters[0], counters[1])
  want = jax.extend.random.threefry_2x32(key, counters.reshape(-1))
  np.testing.assert_array_equal(np.concatenate([y1, y2]), want)


def test_keep_mask_rate_determinism_and_independence():
  key = jax.random.key(3)
  mask = np.asarray(dropout_mask.keep_mask(key, 0.1, (4, 512, 768)))  # odd halves: 1,572,864
  assert mask.dtype == bool and mask.shape == (4, 512, 768)
  # 1.57M Bernoulli(0.9) draws: the standard error of the mean is 0.00024
  assert abs(mask.mean() - 0.9) < 0.001
  np.testing.assert_array_equal(mask, dropout_mask.keep_mask(key, 0.1, (4, 512, 768)))
  # neighbouring positions are not correlated (the two counter halves included)
  flat = mask.reshape(-1).astype(np.float64)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.005
  other = np.asarray(dropout_mask.keep_mask(jax.random.fold_in(key, 1), 0.1, (4, 512, 768)))
  assert 0.15 < np.mean(mask != other) < 0.21  # 2 * 0.9 * 0.1 = 0.18 for independent masks
  # a raw uint32[2] key gives the same mask as the typed key
  raw = dropout_mask.keep_mask(jax.random.key_data(key), 0.1, (4, 512, 768))
  np.testing.assert_array_equal(mask, raw)


def test_odd_sizes_and_extreme_rates():
  key = jax.random.key(0)
  assert dropout_mask.random_bits(key, (3, 5)).shape == (3, 5)
  assert bool(dropout_mask.keep_mask(key, 1e-12, (7,)).all())
  assert not bool(dropout_mask.keep_mask(key, 1.0, (1000,)).any())


def test_hash_bits_pair_the_last_axis():
  """Hand check of the counters: element (i, 2j) takes the first and (i, 2j+1) the second
  Threefry word of counter i * ceil(n / 2) + j; an odd last axis drops the spare word."""
  key = jax.random.key(5)
  data = jax.random.key_data(key)
  bits = np.asarray(dropout_mask.random_bits(key, (2, 5)))
  counters = jnp.arange(6, dtype=jnp.uint32)
  y1, y2 = dropout_mask.threefry2x32(data[0], data[1], counters, jnp.zeros(6, jnp.uint32))
  want = np.stack([np.asarray(y1), np.asarray(y2)], axis=-1).reshape(2, 6)[:, :5]
  np.testing.assert_array_equal(bits, want)


@pytest.mark.parametrize("impl", ["jax", "rbg", "unsafe_rbg"])
def test_jax_random_impls_rate_and_determinism(impl):
  key = jax.random.key(3)
  mask = np.asarray(dropout_mask.keep_mask(key, 0.25, (64, 1024), impl))
  assert mask.shape == (64, 1024) and abs(mask.mean() - 0.75) < 0.01  # 65,536 draws: se 0.0017
  np.testing.assert_array_equal(mask, dropout_mask.keep_mask(key, 0.25, (64, 1024), impl))
  other = np.asarray(dropout_mask.keep_mask(jax.random.fold_in(key, 1), 0.25, (64, 1024), impl))
  assert 0.33 < np.mean(mask != other) < 0.42  # 2 * 0.75 * 0.25 = 0.375 for independent masks


def test_unknown_impl_names_the_choices():
  with pytest.raises(ValueError, match="Unknown dropout impl 'philox'; expected one of hash, jax"):
    dropout_mask.keep_mask(jax.random.key(0), 0.1, (4,), "philox")


# --- sharded train step: no gathered random bits ---------------------------------------------

def _compiled_train_step(impl: str) -> str:
  """HLO text of gpt_tiny's (shrunk) train step, dropout 0.1, on a data mesh of 8 devices."""
  from configs import gpt_tiny  # noqa: PLC0415
  from lm_research import experiment, sharding  # noqa: PLC0415
  from lm_research.data import inputs  # noqa: PLC0415
  from lm_research.optim import make_optimizer  # noqa: PLC0415
  c = gpt_tiny.get_config()
  c.data.source = "synthetic"
  c.model.update(dropout_rate=0.1, dropout_impl=impl, num_layers=1, d_model=32, num_heads=2,
                 d_ff=64, vocab_size=128)
  c.train.update(batch_size=8, seq_len=16)
  c.mesh.update(data=8, fsdp=1, tensor=1)
  exp = experiment.make_experiment(c)
  tx, schedule = make_optimizer(exp.optim_cfg)
  with sharding.active_mesh(exp.mesh):
    graphdef, abstract_state, state_sh, _ = experiment.state_layout(exp, tx)
    train, _ = experiment.compile_steps(exp, graphdef, state_sh, tx, schedule)
    batch = sharding.global_batch(exp.mesh, next(inputs.make_batches(c, "decoder", "train", "",
                                                                     None)))
    return train.lower(abstract_state, batch).compile().as_text()


@pytest.mark.slow  # compiles the sharded train step once per impl
@pytest.mark.parametrize("impl", dropout_mask.IMPLS)
def test_sharded_step_gathers_no_random_bits(impl):
  """8-way data parallel with dropout: no all-gather of u32 (random bits) in the compiled step;
  the flat-counter hash gathered 6 here, each mask whole on every device."""
  gathers = re.findall(r"= (\S+) all-gather(?:-start)?\(", _compiled_train_step(impl))
  assert [g for g in gathers if g.startswith("u32")] == []


@pytest.mark.parametrize("impl", dropout_mask.IMPLS)
def test_sharded_mask_equals_one_device(impl):
  """A mask made batch-sharded over 8 devices is the one-device mask, bit for bit."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  mesh = jax.make_mesh((8,), ("data",))
  key = jax.random.key(11)
  make = lambda k: dropout_mask.keep_mask(k, 0.1, (16, 8, 33), impl)  # noqa: E731
  sharded = jax.jit(make, out_shardings=NamedSharding(mesh, P("data")))(key)
  assert sharded.addressable_shards[0].data.shape == (2, 8, 33)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(jax.jit(make)(key)))
