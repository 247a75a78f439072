"""Softmax attention in plain XLA ops with FlashAttention's backward formula: the CPU path.

The backward pass is written out instead of left to autodiff: it recomputes the probabilities
from the saved queries and keys (nothing of size T x S is kept between the passes) and uses
``rowsum(dP * P) == rowsum(dO * O)`` (Dao et al., 2022), a sum over the head dimension instead
of the key one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _probabilities(q_BNTH, k_BNSH, mask_B1TS, bias_BNTS, scale):
  """softmax(q k^T * scale + bias) over keys, masked keys at zero, in float32."""
  logits_BNTS = jnp.einsum("BNTH,BNSH->BNTS", q_BNTH, k_BNSH,
                           preferred_element_type=jnp.float32) * scale
  if bias_BNTS is not None:
    logits_BNTS = logits_BNTS + bias_BNTS.astype(jnp.float32)
  if mask_B1TS is not None:
    # The most negative float, as jax.nn.dot_product_attention uses: a row with every key
    # masked becomes uniform instead of NaN.
    logits_BNTS = jnp.where(mask_B1TS, logits_BNTS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BNTS, axis=-1)


def attention_weights(q_BTNH, k_BSKH, *, mask_B1TS=None, bias_BNTS=None,
                      scale: float) -> jax.Array:
  """The (B, N, T, S) weights ``softmax_attention`` applies to the values (query head n reads
  key head n // (N / K)); for inspection (plots), never on the training path."""
  k_BSNH = jnp.repeat(k_BSKH, q_BTNH.shape[2] // k_BSKH.shape[2], axis=2)
  return _probabilities(jnp.swapaxes(q_BTNH, 1, 2), jnp.swapaxes(k_BSNH, 1, 2), mask_B1TS,
                        bias_BNTS, scale)


# Inside the custom VJP every array is heads-major (B, N, T, H): each matmul then has its batch
# axes first, as XLA's CPU dots need, instead of transposing its operands again.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, scale):
  return _attention_fwd(q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, scale)[0]


def _attention_fwd(q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, scale):
  p_BNTS = _probabilities(q_BNTH, k_BNSH, mask_B1TS, bias_BNTS, scale)
  o_BNTH = jnp.einsum("BNTS,BNSH->BNTH", p_BNTS.astype(v_BNSH.dtype), v_BNSH)
  return o_BNTH, (q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, o_BNTH)


def _attention_bwd(scale, residuals, do_BNTH):
  q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, o_BNTH = residuals
  p_BNTS = _probabilities(q_BNTH, k_BNSH, mask_B1TS, bias_BNTS, scale)
  dv_BNSH = jnp.einsum("BNTS,BNTH->BNSH", p_BNTS.astype(do_BNTH.dtype), do_BNTH)
  dp_BNTS = jnp.einsum("BNTH,BNSH->BNTS", do_BNTH, v_BNSH, preferred_element_type=jnp.float32)
  rowsum_BNT1 = jnp.einsum("BNTH,BNTH->BNT", do_BNTH, o_BNTH,
                           preferred_element_type=jnp.float32)[..., None]
  ds_BNTS = p_BNTS * (dp_BNTS - rowsum_BNT1)  # gradient of the logits (after scaling)
  dq_BNTH = jnp.einsum("BNTS,BNSH->BNTH", ds_BNTS.astype(q_BNTH.dtype), k_BNSH) * scale
  dk_BNSH = jnp.einsum("BNTS,BNTH->BNSH", ds_BNTS.astype(q_BNTH.dtype), q_BNTH) * scale
  dbias = None
  if bias_BNTS is not None:
    # The bias may be broadcast (one per batch, or per head only): sum over those axes.
    summed = tuple(i for i, n in enumerate(bias_BNTS.shape) if n == 1 and ds_BNTS.shape[i] > 1)
    dbias = jnp.sum(ds_BNTS, axis=summed, keepdims=True).astype(bias_BNTS.dtype)
  return (dq_BNTH.astype(q_BNTH.dtype), dk_BNSH.astype(k_BNSH.dtype),
          dv_BNSH.astype(v_BNSH.dtype), None, dbias)


_attention.defvjp(_attention_fwd, _attention_bwd)


# Causal self-attention splits its queries into blocks of about this many rows; each block
# reads only the keys up to its last row, skipping the masked upper triangle's matmuls.
CAUSAL_BLOCK = 128


def _block(x, rows: slice, cols: slice):
  """``x[..., rows, cols]`` on the last two axes, leaving broadcast (size-1) axes whole."""
  if x is None:
    return None
  whole = slice(None)
  return x[..., rows if x.shape[-2] > 1 else whole, cols if x.shape[-1] > 1 else whole]


def softmax_attention(q_BTNH, k_BSKH, v_BSKH, *, mask_B1TS=None, bias_BNTS=None,
                      scale: float, causal: bool = False,
                      block: int = CAUSAL_BLOCK) -> jax.Array:
  """softmax(q k^T * scale + bias, masked) v; ``K`` key/value heads shared by N / K queries.

  ``causal``: the mask already hides every key after its query (self-attention, T == S). The
  queries then go in blocks of about ``block`` rows over the keys up to each block's end,
  skipping the masked upper triangle. Rows that the mask leaves no key (padding only) differ
  from the unblocked call: both average the values uniformly, over fewer keys here.
  """
  groups = q_BTNH.shape[2] // k_BSKH.shape[2]
  if groups > 1:  # grouped-query attention: autodiff sums the repeated heads' gradients
    k_BSKH = jnp.repeat(k_BSKH, groups, axis=2)
    v_BSKH = jnp.repeat(v_BSKH, groups, axis=2)
  q_BNTH, k_BNSH, v_BNSH = (jnp.swapaxes(x, 1, 2) for x in (q_BTNH, k_BSKH, v_BSKH))
  t, s = q_BNTH.shape[2], k_BNSH.shape[2]
  count = t // block if causal and t == s else 1
  if count < 2:
    o_BNTH = _attention(q_BNTH, k_BNSH, v_BNSH, mask_B1TS, bias_BNTS, scale)
    return jnp.swapaxes(o_BNTH, 1, 2)
  edges = [round(i * t / count) for i in range(count + 1)]
  outputs = []
  for start, end in zip(edges[:-1], edges[1:]):
    rows, cols = slice(start, end), slice(0, end)
    outputs.append(_attention(q_BNTH[:, :, rows], k_BNSH[:, :, cols], v_BNSH[:, :, cols],
                              _block(mask_B1TS, rows, cols), _block(bias_BNTS, rows, cols),
                              scale))
  return jnp.swapaxes(jnp.concatenate(outputs, axis=2), 1, 2)
