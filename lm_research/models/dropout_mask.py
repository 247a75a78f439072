"""Dropout keep-masks from Threefry-2x32 written out in jnp ops.

``jax.random`` lowers Threefry on CPU as a rolled 5-iteration loop, so each dropout mask of
a train step runs as a loop of small kernels with the loop state copied between them: a
GPT-2 small step (49 masks with the rematerialised backward) ran ~3,500 copies. Written out,
the 20 rounds are plain elementwise ops that XLA fuses into the mask's consumer. The hash is
the same Threefry-2x32 (tested against ``jax.extend.random.threefry_2x32``); the counters are
the mask's flat positions, so the masks differ from ``jax.random.bernoulli``'s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key1: jax.Array, key2: jax.Array, x1: jax.Array,
                 x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds (Salmon et al., 2011) of the uint32 counter pairs (x1, x2)."""
  keys = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for i in range(5):
    for bits in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, bits) ^ x1
    x1 = x1 + keys[(i + 1) % 3]
    x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def random_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 bits of ``shape`` from a JAX PRNG key (typed or raw uint32[2])."""
  data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  data = data.reshape(-1).astype(jnp.uint32)
  size = math.prod(shape)
  half = (size + 1) // 2
  counters = jnp.arange(half, dtype=jnp.uint32)
  y1, y2 = threefry2x32(data[0], data[1], counters, counters + np.uint32(half))
  return jnp.concatenate([y1, y2])[:size].reshape(shape)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Booleans of ``shape``, each False with probability ``rate`` (to within 2^-32)."""
  threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
  return random_bits(rng, shape) >= threshold
