"""softmax_attention's hand-written backward against autodiff of a textbook attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm_research.models.softmax_attention import softmax_attention


def textbook_attention(q, k, v, mask, bias, scale):
  """softmax(q k^T * scale + bias) v with masked keys removed; autodiff gives its gradients."""
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k) * scale
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask, logits, -1e30)
  weights = jnp.exp(logits - logits.max(-1, keepdims=True))
  weights = weights / weights.sum(-1, keepdims=True)
  return jnp.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("kv_heads,bias_batch,block", [
    (4, None, 0), (2, 1, 0), (4, 2, 0),
    # causal blocks of 2 query rows: 5 rows become blocks of 2 and 3 over 2 and 5 keys
    (4, None, 2), (2, 1, 2), (4, 2, 2)])
def test_values_and_gradients_match_autodiff(kv_heads, bias_batch, block):
  b, t, n, h = 2, 5, 4, 3
  keys = jax.random.split(jax.random.key(0), 6)
  q = jax.random.normal(keys[0], (b, t, n, h))
  k = jax.random.normal(keys[1], (b, t, kv_heads, h))
  v = jax.random.normal(keys[2], (b, t, kv_heads, h))
  cotangent = jax.random.normal(keys[3], (b, t, n, h))
  bias = (None if bias_batch is None
          else jax.random.normal(keys[4], (bias_batch, n, t, t)))
  # Causal, and the second row's last two keys are padding.
  mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & jnp.array(
      [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)[:, None, None, :]
  scale = 0.7

  def loss(fn, q, k, v, bias):
    return jnp.sum(fn(q, k, v, mask, bias, scale) * cotangent)

  def ours(q, k, v, m, bias, s):
    return softmax_attention(q, k, v, mask_B1TS=m, bias_BNTS=bias, scale=s, causal=block > 0,
                             block=block or 128)
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  got = jax.value_and_grad(lambda *a: loss(ours, *a), argnums)(q, k, v, bias)
  want = jax.value_and_grad(lambda *a: loss(textbook_attention, *a), argnums)(q, k, v, bias)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_fully_masked_row_is_uniform_like_jax():
  q = jnp.ones((1, 2, 1, 2))
  k = jnp.arange(8.0).reshape(1, 4, 1, 2)
  v = jnp.arange(8.0).reshape(1, 4, 1, 2)
  mask = jnp.array([[True, True, False, False], [False] * 4])[None, None]
  out = softmax_attention(q, k, v, mask_B1TS=mask, scale=1.0)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0)
  np.testing.assert_allclose(out, want, rtol=1e-6)
  assert float(out[0, 1, 0, 0]) == pytest.approx(3.0)  # the mean of 0, 2, 4, 6
