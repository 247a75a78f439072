"""Dropout masks: the written-out Threefry against JAX's own, and the masks' statistics."""

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
