"""What 'auto' becomes on each backend (ModelConfig.resolved), the matmul-precision knob, and
whole models through the TPU kernels (interpret mode) against the CPU path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm_research.models import ModelConfig, build_model
from lm_research.models.config import backend_kind

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

TINY = dict(vocab_size=64, d_model=64, num_layers=1, num_heads=2, d_ff=128, max_len=128)


@pytest.mark.parametrize("backend,dtype,attention,dropout", [
    ("cpu", "float32", "xla", "hash"),   # today's CPU paths, unchanged
    ("gpu", "bfloat16", "cudnn", "jax"),
    ("cuda", "bfloat16", "cudnn", "jax"),
    ("tpu", "bfloat16", "splash", "jax"),
    ("METAL", "float32", "xla", "hash"),  # any other backend: the portable choices
])
def test_auto_settles_per_backend(backend, dtype, attention, dropout):
  cfg = ModelConfig(family="decoder", **TINY).resolved(backend)
  assert (cfg.dtype, cfg.attention_impl, cfg.dropout_impl) == (dtype, attention, dropout)
  assert cfg.param_dtype == "float32" and cfg.matmul_precision == "default"


def test_explicit_choices_are_kept():
  cfg = ModelConfig(family="decoder", dtype="float16", attention_impl="flash",
                    dropout_impl="unsafe_rbg", **TINY)
  for backend in ("cpu", "tpu"):
    got = cfg.resolved(backend)
    assert (got.dtype, got.attention_impl, got.dropout_impl) == ("float16", "flash",
                                                                 "unsafe_rbg")


def test_float32_on_gpu_uses_the_xla_attention():
  """cuDNN's flash attention takes 16-bit inputs only: an f32 GPU run keeps the XLA path."""
  cfg = ModelConfig(family="decoder", dtype="float32", **TINY).resolved("gpu")
  assert cfg.attention_impl == "xla" and cfg.dropout_impl == "jax"


def test_cudnn_off_gpu_is_one_clear_error():
  cfg = ModelConfig(family="decoder", attention_impl="cudnn", **TINY)
  with pytest.raises(ValueError, match=r"^model.attention_impl='cudnn' needs an NVIDIA GPU, but "
                                       r"JAX runs on tpu; use attention_impl='auto'.$"):
    cfg.resolved("tpu")


def test_models_resolve_on_the_running_backend():
  """Built here (CPU), an all-'auto' model is the f32 / XLA / hash model."""
  assert backend_kind() == "cpu"
  model = build_model(ModelConfig(family="decoder", **TINY))
  assert model.cfg == ModelConfig(family="decoder", dtype="float32", attention_impl="xla",
                                  dropout_impl="hash", **TINY)


def test_matmul_precision_reaches_every_matmul():
  """'highest' is the precision of each dot in the traced forward; 'default' leaves it unset."""
  ids = jnp.ones((1, 8), jnp.int32)

  def precisions(setting):
    model = build_model(ModelConfig(family="decoder", matmul_precision=setting, **TINY))
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids).logits)(state)
    found = set()

    def walk(j):
      for eqn in j.eqns:
        if eqn.primitive.name == "dot_general":
          found.add(str(eqn.params["precision"]))
        for sub in jax.core.jaxprs_in_params(eqn.params):
          walk(sub)
    walk(jaxpr.jaxpr)
    return found
  with jax.default_matmul_precision("default"):
    assert precisions("highest") == {"(Precision.HIGHEST, Precision.HIGHEST)"}
    assert "(Precision.HIGHEST, Precision.HIGHEST)" not in precisions("default")


# --- whole models through the Pallas kernels (interpret mode) -----------------------------

def _t5(attention_impl):
  cfg = ModelConfig(family="encoder_decoder", position="relative", norm="rmsnorm",
                    use_bias=False, attention_scale=1.0, activation="relu",
                    attention_impl=attention_impl, num_decoder_layers=1, **TINY)
  return build_model(cfg, 0)


def test_t5_through_splash_and_flash_matches_xla():
  """T5 (encoder self-attention with bias, causal decoder with bias: flash; cross-attention:
  splash) on right-padded rows: logits and gradients equal the XLA path's."""
  ids = jax.random.randint(jax.random.key(1), (2, 128), 1, 64)
  enc_mask = (jnp.arange(128)[None] < jnp.asarray([[128], [90]])).astype(jnp.int32)
  dec_mask = (jnp.arange(128)[None] < jnp.asarray([[70], [128]])).astype(jnp.int32)

  def loss_and_grads(impl):
    graphdef, state = nnx.split(_t5(impl))

    def loss(state):
      out = nnx.merge(graphdef, state)(ids, enc_mask, decoder_input_ids=ids,
                                       decoder_attention_mask=dec_mask)
      return jnp.sum(out.logits * dec_mask[..., None]) / 100, out.logits
    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
    return value, logits, grads
  want, want_logits, want_grads = loss_and_grads("xla")
  got, got_logits, got_grads = loss_and_grads("splash")
  real = dec_mask[..., None] != 0
  np.testing.assert_allclose(jnp.where(real, got_logits, 0), jnp.where(real, want_logits, 0),
                             atol=2e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_packed_decoder_through_splash_matches_xla():
  """A decoder on packed rows (segment ids): splash attention's logits equal the XLA path's
  at every real token."""
  ids = jax.random.randint(jax.random.key(2), (2, 128), 1, 64)
  segments = jnp.asarray([[1] * 50 + [2] * 60 + [0] * 18, [1] * 128], jnp.int32)

  def logits(impl):
    model = build_model(ModelConfig(family="decoder", attention_impl=impl, **TINY), 0)
    return model(ids, segment_ids=segments).logits
  real = segments[..., None] != 0
  np.testing.assert_allclose(jnp.where(real, logits("splash"), 0),
                             jnp.where(real, logits("xla"), 0), atol=2e-5)
