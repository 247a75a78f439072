"""Dropout keep-masks: Threefry-2x32 written out in jnp ops ('hash'), or ``jax.random``.

The written-out hash is plain elementwise ops that XLA fuses into the mask's consumer, where
``jax.random`` lowers Threefry on CPU as a rolled loop of small kernels. Its counters are the
elements' own indices (an iota of the mask's shape), so a sharded mask is hashed shard by
shard with no collective. On GPU and TPU ``jax.random`` is the one to use (see
``ModelConfig.dropout_impl``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
IMPLS = ("hash", "jax", "rbg", "unsafe_rbg")


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


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """uint32 row-major position of every element of ``shape``, built from per-axis iotas (which
  the SPMD partitioner computes shard by shard; a flat arange reshaped would be gathered)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


def random_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 bits of ``shape`` from a JAX PRNG key (typed or raw uint32[2]).

  One hash gives two words: the last axis is split into pairs, (even, odd) elements taking the
  two outputs of the pair's counter, so the mask costs half a hash per element.
  """
  data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  data = data.reshape(-1).astype(jnp.uint32)
  shape = tuple(shape) or (1,)
  last = shape[-1]
  pairs = (last + 1) // 2
  y1, y2 = threefry2x32(data[0], data[1], _flat_index(shape[:-1] + (pairs,)),
                        jnp.zeros((), jnp.uint32))
  bits = jnp.stack([y1, y2], axis=-1).reshape(shape[:-1] + (2 * pairs,))
  return bits[..., :last].reshape(shape)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...],
              impl: str = "hash") -> jax.Array:
  """Booleans of ``shape``, each False with probability ``rate`` (to within 2^-32).

  ``impl``: 'hash' (``random_bits``), 'jax' (``jax.random.bits`` of the key), or 'rbg' /
  'unsafe_rbg' (``jax.random.bits`` of a key of that generator seeded from ``rng``).
  """
  threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
  if impl == "hash":
    bits = random_bits(rng, shape)
  elif impl in ("jax", "rbg", "unsafe_rbg"):
    key = rng if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)
    if impl != "jax":
      key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=impl)
    bits = jax.random.bits(key, shape, jnp.uint32)
  else:
    raise ValueError(f"Unknown dropout impl {impl!r}; expected one of {', '.join(IMPLS)}.")
  return bits >= threshold
