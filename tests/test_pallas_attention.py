"""The fused attention kernels against ``softmax_attention`` on CPU: Pallas splash and flash
attention in interpret mode (outputs and gradients, for every kind of attention they serve),
the cuDNN call's arguments, the fallbacks, and the residuals the remat policy keeps."""

import logging
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm_research.models import attention_kernels, blocks
from lm_research.models.attention import attention_mask, dot_product_attention
from lm_research.models.attention_kernels import KERNEL_RESIDUALS, Segments
from lm_research.models.softmax_attention import softmax_attention

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

B, N, H = 2, 2, 32
SCALE = 0.3


def qkv(t, s, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(ks[0], (B, t, N, H)), jax.random.normal(ks[1], (B, s, N, H)),
          jax.random.normal(ks[2], (B, s, N, H)), jax.random.normal(ks[3], (B, N, t, s)))


def padded(n, lengths):
  """Right-padded rows: 1 for the first ``lengths[b]`` tokens of row b, then 0."""
  return (jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.int32)


def packed(n):
  """Row 0: documents 1, 2 and padding; row 1: documents 1, 2, 3."""
  return jnp.asarray([[1] * (n // 2) + [2] * (n // 4) + [0] * (n // 4),
                      [1] * (n // 4) + [2] * (n // 4) + [3] * (n // 2)], jnp.int32)


# (name, T, S, causal, packed rows, bias, implementation): what each kernel serves.
KINDS = [
    ("encoder, padded", 128, 128, False, False, False, "splash"),
    ("causal decoder, padded", 128, 128, True, False, False, "splash"),
    ("causal decoder, packed", 128, 128, True, True, False, "splash"),
    ("T5 self-attention with bias, padded", 128, 128, False, False, True, "flash"),
    ("T5 decoder: causal with bias", 128, 128, True, False, True, "flash"),
    ("cross-attention, padded keys", 128, 256, False, False, False, "splash"),
]


def case(t, s, causal, is_packed):
  q_seg = packed(t) if is_packed else padded(t, [t, t * 3 // 4])
  kv_seg = (packed(s) if is_packed else padded(s, [s * 5 // 8, s])) if t != s else q_seg
  segments = Segments(q_seg, kv_seg, causal=causal, packed=is_packed)
  return segments, attention_mask(q_seg, kv_seg, causal=causal)


def rows_that_count(segments):
  """(B, T, 1, 1) weights: packed padding rows differ between kernels and mask (both finite)."""
  keep = segments.q_BT != 0 if segments.packed else jnp.ones_like(segments.q_BT, bool)
  return keep[:, :, None, None].astype(jnp.float32)


@pytest.mark.parametrize("name,t,s,causal,is_packed,has_bias,impl", KINDS)
def test_pallas_kernels_match_softmax_attention(name, t, s, causal, is_packed, has_bias, impl):
  """Outputs and gradients (queries, keys, values, bias) equal the XLA path's (interpret mode)."""
  q, k, v, bias = qkv(t, s)
  bias = bias if has_bias else None
  segments, mask = case(t, s, causal, is_packed)
  weights = rows_that_count(segments)
  probe = jax.random.normal(jax.random.key(9), q.shape)  # a loss that weighs every output

  def loss(fn):
    return lambda q, k, v, bias: jnp.sum(fn(q, k, v, bias) * probe * weights)
  fused = loss(lambda q, k, v, bias: dot_product_attention(
      q, k, v, mask_B1TS=mask, bias_BNTS=bias, scale=SCALE, implementation=impl,
      causal=causal, segments=segments))
  xla = loss(lambda q, k, v, bias: softmax_attention(q, k, v, mask_B1TS=mask, bias_BNTS=bias,
                                                     scale=SCALE, causal=causal))
  args = (q, k, v, bias)
  np.testing.assert_allclose(fused(*args), xla(*args), rtol=1e-4, err_msg=name)
  argnums = (0, 1, 2, 3) if has_bias else (0, 1, 2)
  got = jax.grad(fused, argnums)(*args)
  want = jax.grad(xla, argnums)(*args)
  for g, w, what in zip(got, want, "qkvb"):
    np.testing.assert_allclose(g, w, atol=2e-4, err_msg=f"{name}: d{what}")


def test_grouped_query_heads_repeat_for_splash():
  """Two query heads sharing one key/value head give the XLA path's result."""
  q, k, v, _ = qkv(128, 128)
  k, v = k[:, :, :1], v[:, :, :1]
  segments, mask = case(128, 128, True, False)
  got = dot_product_attention(q, k, v, mask_B1TS=mask, scale=SCALE, implementation="splash",
                              causal=True, segments=segments)
  want = softmax_attention(q, k, v, mask_B1TS=mask, scale=SCALE, causal=True)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("impl", ["splash", "flash"])
def test_save_dots_keeps_the_kernel_residuals(impl, capsys):
  """Under remat 'save_dots' the kernel's output and softmax statistics are saved for the
  backward pass (which then does not run the forward kernel again); 'full' saves neither."""
  q, k, v, bias = qkv(128, 128)
  segments, mask = case(128, 128, True, False)

  def f(q, k, v):
    return jnp.sum(dot_product_attention(
        q, k, v, mask_B1TS=mask, bias_BNTS=bias if impl == "flash" else None, scale=SCALE,
        implementation=impl, causal=True, segments=segments))

  def saved(policy):
    jax.ad_checkpoint.print_saved_residuals(jax.checkpoint(f, policy=policy), q, k, v)
    return {line.split()[0] for line in capsys.readouterr().out.splitlines()
            if "from the argument" not in line and "from a constant" not in line}
  # the output, heads-major; the log-sum-exp (splash) or running max and sum (flash)
  want = {f"f32[{B},{N},128,{H}]", f"f32[{B},{N},128]"}
  assert want <= saved(blocks.REMAT_POLICIES["save_dots"])
  assert not want & saved(blocks.REMAT_POLICIES["full"])


# --- cuDNN: the call's arguments, checked on CPU --------------------------------------------

@pytest.mark.parametrize("name,t,s,causal,has_bias", [
    ("causal decoder, padded", 64, 64, True, False),
    ("encoder, padded, with bias", 64, 64, False, True),
    ("cross-attention, padded keys", 64, 96, False, False),
])
def test_cudnn_call_uses_causal_flag_and_lengths(name, t, s, causal, has_bias):
  """jax.nn.dot_product_attention gets is_causal, per-row lengths and the bias, never a mask;
  run by its XLA implementation with those arguments it equals softmax_attention on real rows."""
  q, k, v, bias = qkv(t, s)
  bias = bias if has_bias else None
  segments, mask = case(t, s, causal, False)
  calls = []
  real = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **dict(kwargs, implementation="xla"))
  with mock.patch.object(jax.nn, "dot_product_attention", spy):
    got = attention_kernels.cudnn_attention(q, k, v, bias_BNTS=bias, scale=SCALE,
                                            segments=segments)
  (kwargs,) = calls
  assert kwargs["implementation"] == "cudnn" and kwargs["is_causal"] is causal
  assert "mask" not in kwargs and (kwargs["bias"] is bias)
  np.testing.assert_array_equal(kwargs["query_seq_lengths"], segments.q_BT.sum(1))
  np.testing.assert_array_equal(kwargs["key_value_seq_lengths"], segments.kv_BS.sum(1))
  want = softmax_attention(q, k, v, mask_B1TS=mask, bias_BNTS=bias, scale=SCALE, causal=causal)
  real_rows = segments.q_BT[:, :, None, None] != 0
  np.testing.assert_allclose(jnp.where(real_rows, got, 0), jnp.where(real_rows, want, 0),
                             atol=1e-5, err_msg=name)


@pytest.mark.parametrize("dtype,segments,head_dim,reason", [
    (jnp.bfloat16, None, 32, "a dense mask"),
    (jnp.bfloat16, "packed", 32, "packed segments"),
    (jnp.float32, "padded", 32, "float32 inputs"),
    (jnp.bfloat16, "padded", 36, "head_dim 36"),
    (jnp.bfloat16, "padded", 32, ""),
])
def test_cudnn_fallback_reasons(dtype, segments, head_dim, reason):
  q = jnp.zeros((B, 64, N, head_dim), dtype)
  seg = {None: None, "packed": Segments(packed(64), packed(64), packed=True),
         "padded": Segments(padded(64, [64, 40]), padded(64, [64, 40]))}[segments]
  got = attention_kernels.cudnn_unsupported(q, None, seg)
  assert got.startswith(reason) and bool(got) == bool(reason)


def test_fallback_runs_softmax_attention_and_logs_once(caplog):
  """cuDNN asked for packed rows: the XLA path runs, with one log line naming the reason."""
  q, k, v, _ = qkv(64, 64)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  segments, mask = case(64, 64, True, True)
  attention_kernels._noted.discard("packed segments (several documents per row)")
  with caplog.at_level(logging.WARNING, logger="lm_research"):
    for _ in range(2):
      got = dot_product_attention(q, k, v, mask_B1TS=mask, scale=SCALE, implementation="cudnn",
                                  causal=True, segments=segments)
  want = softmax_attention(q, k, v, mask_B1TS=mask, scale=SCALE, causal=True)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  lines = [r.getMessage() for r in caplog.records]
  assert lines == ["attention: cuDNN flash attention cannot express packed segments (several "
                   "documents per row); using the XLA attention there."]


def test_cudnn_residuals_carry_the_remat_name(capsys):
  """The cuDNN call's residuals (here those of its XLA stand-in) are saved by name under
  'save_dots', so its forward is not run again in the backward pass."""
  q, k, v, _ = qkv(64, 64)
  segments, _ = case(64, 64, True, False)
  real = jax.nn.dot_product_attention

  def f(q, k, v):
    return jnp.sum(attention_kernels.cudnn_attention(q, k, v, bias_BNTS=None, scale=SCALE,
                                                     segments=segments))
  with mock.patch.object(jax.nn, "dot_product_attention",
                         lambda *a, **kw: real(*a, **dict(kw, implementation="xla"))):
    jax.ad_checkpoint.print_saved_residuals(
        jax.checkpoint(f, policy=blocks.REMAT_POLICIES["save_dots"]), q, k, v)
  assert f"named '{KERNEL_RESIDUALS}'" in capsys.readouterr().out
