"""Model tests on tiny models: causality, padding, packing, remat/scan/GQA parity, dropout, dtypes.

Every check compares against an independent computation (another model layout, separate runs,
hand-computed values or a re-implementation), so a wrong mask or a broken layout fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm_research.models import ModelConfig, build_model, layout

VOCAB = 64
GPT2 = dict(family="decoder", vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            max_len=16, activation="gelu_tanh")
LLAMA = dict(GPT2, position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
             num_kv_heads=2, use_bias=False, tie_embeddings=False)
BERT = dict(family="encoder", vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            max_len=16, type_vocab_size=2, pre_norm=False, norm_eps=1e-12, pooler=True,
            head="pretraining")
T5 = dict(family="encoder_decoder", vocab_size=VOCAB, d_model=32, num_layers=2,
          num_decoder_layers=2, num_heads=4, head_dim=8, d_ff=64, position="relative",
          norm="rmsnorm", norm_eps=1e-6, activation="relu", use_bias=False, attention_scale=1.0,
          initializer_range=0.05, rel_buckets=8, rel_max_distance=16)
T5_V1_1 = dict(T5, activation="gelu_tanh", gated_mlp=True, tie_embeddings=False)
FAMILIES = {"gpt2": GPT2, "llama": LLAMA, "bert": BERT, "t5": T5, "t5_v1_1": T5_V1_1}

# Distinct ids, so a gradient w.r.t. an embedding row is a gradient w.r.t. one position.
IDS = np.array([[5, 9, 14, 3, 22, 7, 30, 11]], np.int32)
TYPES = np.array([[0, 0, 0, 0, 1, 1, 1, 1]], np.int32)
DEC_IDS = np.array([[40, 41, 42, 43, 44, 45, 46, 47]], np.int32)  # disjoint from IDS
TARGETS = np.array([[9, 14, 3, 22, 7, 30, 11, 2]], np.int32)


def make(base: dict, seed: int = 0, **changes) -> nnx.Module:
  """A model of the ``base`` family with some config fields changed."""
  return build_model(ModelConfig(**dict(base, **changes)), seed)


# Tiny models compile slower than they run: skip XLA's expensive CPU passes in the jitted
# gradients (plain calls run eagerly, sharing compiled operations across same-shaped models).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def forward(model, rng=None):
  """The family's standard call on the shared test inputs."""
  family = model.cfg.family
  if family == "encoder_decoder":
    return model(IDS, decoder_input_ids=DEC_IDS, dropout_rng=rng)
  if family == "encoder":
    return model(IDS, token_type_ids=TYPES, dropout_rng=rng)
  return model(IDS, dropout_rng=rng)


def outputs(out) -> dict:
  """The array fields of a ModelOutput, by name."""
  names = ("hidden_states", "logits", "pooled", "nsp_logits", "encoder_hidden_states")
  return {n: np.asarray(getattr(out, n)) for n in names if getattr(out, n) is not None}


def assert_outputs_close(got, want, **tol):
  """Every array field of two ModelOutputs agrees."""
  got, want = outputs(got), outputs(want)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)


def flat(tree, prefix=()):
  """Flattens a nested dict into {'a.b.c': leaf}."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flat(value, prefix + (str(key),)))
    return out
  return {".".join(prefix): np.asarray(tree)}


# --- causality -------------------------------------------------------------------------------

def position_jacobian(model, call, ids) -> np.ndarray:
  """|d (hidden[t] . v) / d embedding row of ids[t']| summed over width: a (T, T') matrix."""
  graphdef, token, rest = nnx.split(model, nnx.PathContains("token"), ...)
  (table,) = jax.tree.leaves(token)
  v = jax.random.normal(jax.random.key(7), (model.cfg.d_model,))

  def f(table):
    m = nnx.merge(graphdef, jax.tree.map(lambda _: table, token), rest)
    return call(m).hidden_states[0] @ v

  jac_TVD = jax.jit(jax.jacrev(f), compiler_options=FAST_COMPILE)(table)
  return np.abs(np.asarray(jac_TVD)[:, np.asarray(ids)[0], :]).sum(-1)


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_decoder_is_causal_through_gradients(name):
  """d output[t] / d input[t'] is exactly 0 for t' > t and nonzero for every t' <= t."""
  model = make(FAMILIES[name])
  if name == "t5":
    ids = DEC_IDS
    jac = position_jacobian(model, lambda m: m(IDS, decoder_input_ids=DEC_IDS), ids)
  else:
    ids = IDS
    jac = position_jacobian(model, lambda m: m(IDS), ids)
  t = ids.shape[1]
  assert jac.shape == (t, t)
  np.testing.assert_array_equal(jac[np.triu_indices(t, 1)], 0.0)
  assert (jac[np.tril_indices(t)] > 1e-6).all(), jac


def test_encoder_is_not_causal():
  """The BERT encoder's first position depends on the last one (the causality test can fail)."""
  model = make(BERT)
  jac = position_jacobian(model, lambda m: m(IDS), IDS)
  assert (jac > 1e-6).all(), jac


# --- padding and packing ---------------------------------------------------------------------

# Few distinct sequence lengths (8, 5, 2) keep the eagerly compiled operations few.
REAL = IDS[:, :5]
PADDED = np.concatenate([REAL, [[0, 63, 17]]], axis=1).astype(np.int32)  # any padding ids
PAD_MASK = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.int32)


# A second row of nothing but padding (as in a batch filled up at the end of an eval set).
PADDED_2 = np.concatenate([PADDED, PADDED[:, ::-1]])
PAD_MASK_2 = np.concatenate([PAD_MASK, np.zeros_like(PAD_MASK)])


def test_bert_padding_invariance():
  """BERT outputs on real tokens ignore appended padding with attention_mask 0."""
  model = make(BERT)
  want = model(REAL, token_type_ids=np.zeros_like(REAL))
  got = model(PADDED_2, PAD_MASK_2, np.zeros_like(PADDED_2))
  assert np.isfinite(got.hidden_states).all() and np.isfinite(got.logits).all()
  got = jax.tree.map(lambda x: x[:1], got)
  n = REAL.shape[1]
  np.testing.assert_allclose(got.hidden_states[:, :n], want.hidden_states, atol=1e-5)
  np.testing.assert_allclose(got.logits[:, :n], want.logits, atol=1e-5)
  np.testing.assert_allclose(got.pooled, want.pooled, atol=1e-5)
  np.testing.assert_allclose(got.nsp_logits, want.nsp_logits, atol=1e-5)
  # Without the mask, the padding would change the outputs: the comparison has teeth.
  unmasked = model(PADDED, None, np.zeros_like(PADDED))
  assert np.abs(unmasked.hidden_states[:, :n] - want.hidden_states).max() > 1e-3


@pytest.mark.parametrize("name", ["t5", "t5_v1_1"])
def test_t5_padding_invariance(name):
  """T5's encoder output and the decoder's view of it ignore padded encoder positions."""
  model = make(FAMILIES[name])
  n = REAL.shape[1]
  np.testing.assert_allclose(model.encode(PADDED, PAD_MASK)[:, :n], model.encode(REAL),
                             atol=1e-5)
  want = model(REAL, decoder_input_ids=DEC_IDS)
  got = model(PADDED_2, PAD_MASK_2, decoder_input_ids=np.concatenate([DEC_IDS, DEC_IDS]))
  assert np.isfinite(got.hidden_states).all() and np.isfinite(got.logits).all()
  got = jax.tree.map(lambda x: x[:1], got)
  np.testing.assert_allclose(got.hidden_states, want.hidden_states, atol=1e-5)
  np.testing.assert_allclose(got.logits, want.logits, atol=1e-5)
  unmasked = model(PADDED, decoder_input_ids=DEC_IDS)
  assert np.abs(unmasked.hidden_states - want.hidden_states).max() > 1e-3


SEGMENTS = np.array([[1, 1, 1, 1, 1, 2, 2, 0]], np.int32)
PACKED = np.array([[11, 4, 25, 9, 31, 6, 18, 0]], np.int32)
SPANS = (slice(0, 5), slice(5, 7))
DEC_SEGMENTS = np.array([[1, 1, 2, 2, 2, 2, 2, 0]], np.int32)
DEC_PACKED = np.array([[2, 8, 2, 13, 6, 27, 33, 0]], np.int32)
DEC_SPANS = (slice(0, 2), slice(2, 7))


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_packed_segments_equal_separate_runs(name):
  """Two documents packed in one row give the same outputs as running each alone."""
  model = make(FAMILIES[name])
  packed = model(PACKED, segment_ids=SEGMENTS)
  for span in SPANS:
    alone = model(PACKED[:, span])
    np.testing.assert_allclose(packed.hidden_states[:, span], alone.hidden_states, atol=1e-5)
    np.testing.assert_allclose(packed.logits[:, span], alone.logits, atol=1e-5)


@pytest.mark.parametrize("name", ["t5", "t5_v1_1"])
def test_t5_packed_segments_equal_separate_runs(name):
  """Packing both T5 sides gives each document pair the outputs of its own run."""
  model = make(FAMILIES[name])
  packed = model(PACKED, decoder_input_ids=DEC_PACKED, segment_ids=SEGMENTS,
                 decoder_segment_ids=DEC_SEGMENTS)
  for enc_span, dec_span in zip(SPANS, DEC_SPANS):
    alone = model(PACKED[:, enc_span], decoder_input_ids=DEC_PACKED[:, dec_span])
    np.testing.assert_allclose(packed.encoder_hidden_states[:, enc_span],
                               alone.encoder_hidden_states, atol=1e-5)
    np.testing.assert_allclose(packed.hidden_states[:, dec_span], alone.hidden_states, atol=1e-5)
    np.testing.assert_allclose(packed.logits[:, dec_span], alone.logits, atol=1e-5)


# --- remat and scan --------------------------------------------------------------------------

def outputs_and_grads(model):
  """Outputs and d(cross-entropy on TARGETS-like labels)/d params in the loop layout."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(p):
    out = forward(nnx.merge(graphdef, p, rest))
    targets = TARGETS[:, :out.logits.shape[1]]
    logp = jax.nn.log_softmax(out.logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)), out

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, out), grads = jax.jit(grad_fn, compiler_options=FAST_COMPILE)(params)
  grads = nnx.to_pure_dict(grads)
  if model.cfg.scan_layers:
    grads = layout.unstack_layers(grads)
  return out, flat(grads)


# Each remat policy once, and scan once (with the other policy), against the plain loop.
VARIANTS = {"loop_remat_full": dict(remat="full"),
            "scan_remat_save_dots": dict(scan_layers=True, remat="save_dots")}


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_remat_and_scan_match_plain_loop(name):
  """remat ('full', 'save_dots') and scan give the plain loop's outputs and gradients."""
  plain = make(FAMILIES[name])
  want_out, want_grads = outputs_and_grads(plain)
  assert all(np.abs(g).max() > 0 for k, g in want_grads.items() if "blocks" in k)
  params = layout.get_params(plain)
  for variant, changes in VARIANTS.items():
    model = make(FAMILIES[name], seed=1, **changes)  # other weights until set_params copies them
    layout.set_params(model, params)
    got_out, got_grads = outputs_and_grads(model)
    assert_outputs_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys(), variant
    for key in want_grads:
      np.testing.assert_allclose(got_grads[key], want_grads[key], rtol=1e-4, atol=1e-7,
                                 err_msg=f"{variant}: {key}")


def test_scan_layout_round_trip():
  """get_params of a scanned model is the loop layout, and set_params stacks it back."""
  loop = make(T5)
  scan = make(T5, seed=1, scan_layers=True)
  layout.set_params(scan, layout.get_params(loop))
  assert scan.encoder.layers.blocks.attn.query.kernel.shape == (2, 32, 32)
  got, want = flat(layout.get_params(scan)), flat(layout.get_params(loop))
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  with pytest.raises(ValueError, match="shape"):
    layout.set_params(make(dict(T5, d_ff=48)), layout.get_params(loop))


# --- dropout and dtypes ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_dropout_only_with_rng_and_reproducible(name):
  """No rng: deterministic and equal to a rate-0 model; an rng: different, and reproducible."""
  model = make(FAMILIES[name], dropout_rate=0.1)
  no_dropout = make(FAMILIES[name], dropout_rate=0.0)
  layout.set_params(no_dropout, layout.get_params(model))
  det = forward(model)
  assert_outputs_close(forward(model), det, rtol=0, atol=0)
  assert_outputs_close(det, forward(no_dropout), rtol=1e-6, atol=1e-6)
  key = jax.random.key(3)
  dropped = forward(model, key)
  assert_outputs_close(forward(model, key), dropped, rtol=0, atol=0)
  assert np.abs(dropped.hidden_states - det.hidden_states).max() > 1e-3
  other = forward(model, jax.random.key(4))
  assert np.abs(other.hidden_states - dropped.hidden_states).max() > 1e-3


def test_dropout_masks_same_in_scan_and_loop():
  """A scanned T5 draws the same per-layer dropout masks as the loop, for the same rng."""
  loop = make(T5, dropout_rate=0.1)
  scan = make(T5, seed=1, dropout_rate=0.1, scan_layers=True)
  layout.set_params(scan, layout.get_params(loop))
  key = jax.random.key(5)
  assert_outputs_close(forward(scan, key), forward(loop, key), rtol=1e-5, atol=1e-6)


def test_save_dots_keeps_dropout_masks():
  """remat='save_dots' keeps each dropout mask for the backward pass instead of hashing it
  again, and its gradients equal the plain loop's for the same rng."""
  key = jax.random.key(7)

  def hash_ops_and_grads(model):
    """Threefry rotations in the loss's jaxpr and in its gradient's; the gradients."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      return jnp.sum(forward(nnx.merge(graphdef, p, rest), key).hidden_states ** 2)

    grad_fn = jax.grad(loss)
    counts = [str(jax.make_jaxpr(f)(params)).count("shift_left") for f in (loss, grad_fn)]
    grads = nnx.to_pure_dict(jax.jit(grad_fn, compiler_options=FAST_COMPILE)(params))
    if model.cfg.scan_layers:
      grads = layout.unstack_layers(grads)
    return counts, flat(grads)

  plain = make(GPT2, dropout_rate=0.1)
  saved = make(GPT2, seed=1, dropout_rate=0.1, scan_layers=True, remat="save_dots")
  layout.set_params(saved, layout.get_params(plain))
  (forward_ops, grad_ops), got = hash_ops_and_grads(saved)
  assert forward_ops > 0 and grad_ops == forward_ops  # no mask hashed a second time
  _, want = hash_ops_and_grads(plain)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "t5"])
def test_bfloat16_compute_close_to_float32(name):
  """dtype='bfloat16' computes in bf16 with float32 parameters, close to the f32 model."""
  f32 = make(FAMILIES[name])
  bf16 = make(FAMILIES[name], seed=1, dtype="bfloat16", param_dtype="float32")
  layout.set_params(bf16, layout.get_params(f32))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  got, want = forward(bf16), forward(f32)
  assert got.hidden_states.dtype == jnp.bfloat16
  assert got.logits.dtype == jnp.float32
  for field in ("hidden_states", "logits"):
    g = np.asarray(getattr(got, field), np.float32)
    w = np.asarray(getattr(want, field))
    assert np.isfinite(g).all()
    rel = np.linalg.norm(g - w) / np.linalg.norm(w)
    assert 0 < rel < 5e-2, (field, rel)


# --- grouped-query attention -----------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_weights(kv_heads, use_bias):
  """GQA equals full MHA whose k/v projections repeat each kv head for its query group."""
  gqa = make(LLAMA, num_kv_heads=kv_heads, use_bias=use_bias)
  mha = make(LLAMA, seed=1, num_kv_heads=None, use_bias=use_bias)
  n, h, d = 4, 8, 32
  params = layout.get_params(gqa)
  for block in params["stack"]["layers"]["blocks"].values():
    for proj in ("key", "value"):
      p = block["attn"][proj]
      assert p["kernel"].shape == (d, kv_heads * h)
      p["kernel"] = np.repeat(np.asarray(p["kernel"]).reshape(d, kv_heads, h), n // kv_heads,
                              axis=1).reshape(d, n * h)
      if use_bias:
        p["bias"] = np.repeat(np.asarray(p["bias"]).reshape(kv_heads, h), n // kv_heads,
                              axis=0).reshape(n * h)
  layout.set_params(mha, params)
  assert_outputs_close(forward(mha), forward(gqa), rtol=1e-5, atol=1e-6)
  packed = dict(segment_ids=SEGMENTS)
  np.testing.assert_allclose(mha(PACKED, **packed).logits, gqa(PACKED, **packed).logits,
                             rtol=1e-5, atol=1e-6)


# --- errors ----------------------------------------------------------------------------------

def test_sequence_longer_than_max_len_raises():
  """More tokens than the learned position table holds is a clear ValueError."""
  ids = np.ones((1, 17), np.int32)
  for base in (GPT2, BERT):
    with pytest.raises(ValueError, match=r"Sequence length 17 exceeds model\.max_len=16"):
      make(base)(ids)


@pytest.mark.parametrize("changes,message", [
    (dict(activation="swish"), r"model\.activation='swish' is not one of"),
    (dict(d_model=30), r"d_model=30 is not divisible by model\.num_heads=4"),
    (dict(num_kv_heads=3), r"num_heads=4 must be a multiple of model\.num_kv_heads=3"),
    (dict(family="decoder", position="relative"), r"position='relative'"),
    (dict(norm="batchnorm"), r"model\.norm='batchnorm'"),
    (dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
    (dict(attention_impl="mosaic"), r"model\.attention_impl='mosaic' is not one of"),
    (dict(attention_impl="cudnn", dtype="float32"),
     r"attention_impl='cudnn' needs model\.dtype=bfloat16"),
    (dict(dropout_impl="philox"), r"model\.dropout_impl='philox' is not one of"),
    (dict(matmul_precision="tf32"), r"model\.matmul_precision='tf32' is not one of"),
    (dict(dtype="bf16"), r"model\.dtype='bf16' is not one of auto, float32"),
])
def test_bad_model_config_raises(changes, message):
  """Impossible ModelConfig values fail at construction with a sentence naming the field."""
  with pytest.raises(ValueError, match=message):
    ModelConfig(**dict(GPT2, **changes))


@pytest.mark.parametrize("typo,suggestion", [
    ("num_head", "num_heads"), ("dropout_rat", "dropout_rate"), ("vocab_sise", "vocab_size")])
def test_from_dict_suggests_nearest_key(typo, suggestion):
  """A misspelt config key names the nearest valid key."""
  block = dict(GPT2)
  block[typo] = 1
  with pytest.raises(ValueError, match=rf"model\.{typo}\. Did you mean model\.{suggestion}\?"):
    ModelConfig.from_dict(block)
  assert ModelConfig.from_dict(GPT2) == ModelConfig(**GPT2)
