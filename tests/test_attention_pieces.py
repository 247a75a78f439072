"""Hand-computed attention pieces: T5 relative-position buckets (vs Hugging Face's formula),
masks, positions from segments, rotary embeddings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm_research.models.attention import (apply_rope, attention_mask, positions_from_segments,
                                          relative_position_bucket)


def hf_relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """Hugging Face's T5Attention._relative_position_bucket for one int, in float32 like torch."""
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket += (relative_position > 0) * num_buckets
    relative_position = abs(relative_position)
  else:
    relative_position = -min(relative_position, 0)
  max_exact = num_buckets // 2
  if relative_position < max_exact:
    return bucket + relative_position
  large = max_exact + int(np.log(np.float32(relative_position) / np.float32(max_exact))
                          / np.float32(math.log(max_distance / max_exact))
                          * np.float32(num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
  """T5 buckets equal Hugging Face's formula on distances -300..300."""
  relative = np.arange(-300, 301, dtype=np.int32)
  got = np.asarray(relative_position_bucket(
      jnp.asarray(relative), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance))
  want = [hf_relative_position_bucket(int(r), bidirectional, num_buckets, max_distance)
          for r in relative]
  np.testing.assert_array_equal(got, want)
  assert got.min() >= 0 and got.max() == num_buckets - 1
  if bidirectional and num_buckets == 32:  # hand-checked anchors for the default 32/128
    anchors = {0: 0, 1: 17, -1: 1, 7: 23, -7: 7, 8: 24, 128: 31, -128: 15, 300: 31}
    assert {r: int(got[300 + r]) for r in anchors} == anchors
  if not bidirectional:
    np.testing.assert_array_equal(got[301:], 0)  # future keys all share bucket 0
    np.testing.assert_array_equal(got[300 - np.arange(num_buckets // 2)],
                                  np.arange(num_buckets // 2))  # exact buckets for the past


def test_attention_mask_hand_example():
  """Masks for segments [1, 1, 2, 2, 0]: same segment, keys not padding, causal when asked."""
  seg = jnp.array([[1, 1, 2, 2, 0]])
  bidirectional = np.array([[1, 1, 0, 0, 0],
                            [1, 1, 0, 0, 0],
                            [0, 0, 1, 1, 0],
                            [0, 0, 1, 1, 0],
                            [1, 1, 1, 1, 0]], bool)  # a padding query sees every real key
  causal = np.array([[1, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0],
                     [0, 0, 1, 0, 0],
                     [0, 0, 1, 1, 0],
                     [1, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(attention_mask(seg, seg, causal=False)[0, 0], bidirectional)
  np.testing.assert_array_equal(attention_mask(seg, seg, causal=True)[0, 0], causal)
  # Cross-attention: decoder segments [1, 2, 2] over encoder segments [1, 1, 2, 2, 0].
  cross = attention_mask(jnp.array([[1, 2, 2]]), seg, causal=False)
  assert cross.shape == (1, 1, 3, 5)
  np.testing.assert_array_equal(cross[0, 0], [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0],
                                              [0, 0, 1, 1, 0]])


def test_positions_from_segments_hand_example():
  """Positions restart at each new segment (padding runs count from 0 too)."""
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 3], [1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(positions_from_segments(seg),
                                [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 0, 1, 2],
                                 [0, 1, 2, 3, 4, 5, 6]])


def test_apply_rope_rotations():
  """RoPE keeps norms, is identity at 0, rotates by pos/theta^(2i/H), q.k sees only m - n."""
  rope = jax.jit(apply_rope, static_argnums=2)
  x = np.random.RandomState(0).normal(size=(1, 6, 2, 8)).astype(np.float32)
  y = np.asarray(rope(x, np.array([[0, 1, 2, 5, 9, 100]]), 10000.0))
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_array_equal(y[:, 0], x[:, 0])
  # Head dim 4, half-split layout: (x0, x2) rotate by pos, (x1, x3) by pos / 100 (theta 1e4).
  e = np.eye(4, dtype=np.float32)
  got = np.asarray(rope(np.stack([e[0], e[0], e[1]])[None, :, None], np.array([[3, 50, 50]]),
                        10000.0))[0, :, 0]
  np.testing.assert_allclose(got, [[math.cos(3), 0, math.sin(3), 0],
                                   [math.cos(50), 0, math.sin(50), 0],
                                   [0, math.cos(0.5), 0, math.sin(0.5)]], atol=1e-5)
  q, k = x[0, 0, 0], x[0, 1, 0]
  rotated = np.asarray(rope(np.stack([q, k, q, k])[None, :, None], np.array([[7, 3, 24, 20]]),
                            10000.0))[0, :, 0]
  np.testing.assert_allclose(rotated[0] @ rotated[1], rotated[2] @ rotated[3], rtol=1e-4)
  assert abs(rotated[0] @ rotated[1] - q @ k) > 1e-3  # and it does depend on the difference

