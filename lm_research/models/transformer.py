"""The three model families: Encoder (BERT), Decoder (GPT-2 / LLaMA-style), EncoderDecoder (T5).

Each is called like its Hugging Face counterpart and returns a ``ModelOutput``. Dropout is
active only when a ``dropout_rng`` is given, so evaluation is deterministic by default.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lm_research import sharding
from lm_research.models.attention import (RelativePositionBias, attention_mask,
                                          positions_from_segments, segments_from_inputs)
from lm_research.models.attention_kernels import Segments
from lm_research.models.blocks import BlockContext, KVCache, LayerStack
from lm_research.models.config import ModelConfig
from lm_research.models.heads import Classifier, MlmHead, Pooler, last_token, mean_of_tokens
from lm_research.models.layers import Norm, dense, dropout, normal_init


@struct.dataclass
class ModelOutput:
  """Final-layer hidden states, the head's logits, and family extras."""

  hidden_states: jax.Array
  logits: jax.Array | None = None
  pooled: jax.Array | None = None
  nsp_logits: jax.Array | None = None
  encoder_hidden_states: jax.Array | None = None


@struct.dataclass
class DecodeCache:
  """A decoder stack's KV cache for autoregressive decoding, threaded through as a value.

  Slots fill left to right, the same ``index`` for every row (prompts are left-aligned to end
  together, with padding slots marked 0 in ``segments_BS``), so shapes stay fixed under jit.
  """

  layers: KVCache  # per-layer keys/values, (L, B, S, K, H)
  segments_BS: jax.Array  # 1 where a slot holds a token (its key may be attended), else 0
  positions_BS: jax.Array  # each slot's token position (T5's relative bias needs the keys')
  index: jax.Array  # int32 scalar: the next slot to write
  memory_segments_BS: jax.Array | None = None  # encoder padding, for cross-attention

  def take_rows(self, rows_R: jax.Array) -> "DecodeCache":
    """The cache of batch rows ``rows_R`` (beam search: expand and reorder hypotheses)."""
    take = lambda a: jnp.take(a, rows_R, axis=0)  # noqa: E731
    return self.replace(
        layers=jax.tree.map(lambda a: jnp.take(a, rows_R, axis=1), self.layers),
        segments_BS=take(self.segments_BS), positions_BS=take(self.positions_BS),
        memory_segments_BS=(None if self.memory_segments_BS is None
                            else take(self.memory_segments_BS)))


def _with_precision(method):
  """Runs a model method with ``cfg.matmul_precision`` as the default for its matmuls."""
  @functools.wraps(method)
  def wrapped(self, *args, **kwargs):
    if self.cfg.matmul_precision == "default":
      return method(self, *args, **kwargs)
    with jax.default_matmul_precision(self.cfg.matmul_precision):
      return method(self, *args, **kwargs)
  return wrapped


def _rng(rng: jax.Array | None, i: int) -> jax.Array | None:
  return None if rng is None else jax.random.fold_in(rng, i)


class Embeddings(nnx.Module):
  """Token (+ learned position) (+ token type) embeddings, BERT's LayerNorm, dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    def embed(n, names):
      return nnx.Embed(n, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                       param_dtype=jnp.dtype(cfg.param_dtype),
                       embedding_init=normal_init(cfg, names), rngs=rngs)
    self.token = embed(cfg.vocab_size, ("vocab", "embed"))
    self.learned_positions = cfg.position == "learned"
    if self.learned_positions:
      self.position = embed(cfg.max_len, (None, "embed"))
    self.has_types = cfg.type_vocab_size > 0
    if self.has_types:
      self.token_type = embed(cfg.type_vocab_size, (None, "embed"))
    self.post_norm = not cfg.pre_norm
    if self.post_norm:
      self.norm = Norm(cfg, rngs=rngs)
    self.rate = cfg.dropout_rate
    self.dropout_impl = cfg.dropout_impl
    self.max_len = cfg.max_len

  def __call__(self, ids_BT, positions_BT, token_types_BT, rng) -> jax.Array:
    x_BTD = self.token(ids_BT)
    if self.learned_positions:
      x_BTD = x_BTD + self.position(positions_BT)
    if self.has_types:
      types = jnp.zeros_like(ids_BT) if token_types_BT is None else token_types_BT
      x_BTD = x_BTD + self.token_type(types)
    if self.post_norm:
      x_BTD = self.norm(x_BTD)
    x_BTD = dropout(x_BTD, self.rate, rng, self.dropout_impl)
    return sharding.constrain(x_BTD, ("batch", "length", "embed"))


class Stack(nnx.Module):
  """Layers plus what they share: masks, T5's relative bias, and the final norm (pre-norm)."""

  def __init__(self, cfg: ModelConfig, num_layers: int, *, causal: bool, cross: bool,
               rngs: nnx.Rngs):
    self.causal = causal
    self.relative = cfg.position == "relative"
    if self.relative:
      self.relative_bias = RelativePositionBias(cfg, bidirectional=not causal, rngs=rngs)
    self.layers = LayerStack(cfg, num_layers, cross=cross, rngs=rngs)
    self.pre_norm = cfg.pre_norm
    if cfg.pre_norm:
      self.final_norm = Norm(cfg, rngs=rngs)

  def __call__(self, x_BTD, segments_BT, positions_BT, rng, *, memory_BSD=None,
               memory_segments_BS=None, packed: bool = False,
               memory_packed: bool = False) -> jax.Array:
    """The layers over ``x_BTD``; ``packed`` / ``memory_packed``: explicit segment ids (several
    documents per row) in this stack's / the encoder's input, not only padding."""
    ctx = BlockContext(
        self_mask_B1TS=attention_mask(segments_BT, segments_BT, causal=self.causal),
        self_causal=self.causal,
        self_segments=Segments(segments_BT, segments_BT, causal=self.causal, packed=packed),
        positions_BT=positions_BT,
        self_bias_BNTS=(self.relative_bias(positions_BT, positions_BT)
                        if self.relative else None),
        memory_BSD=memory_BSD,
        cross_mask_B1TS=(None if memory_BSD is None else
                         attention_mask(segments_BT, memory_segments_BS, causal=False)),
        cross_segments=(None if memory_BSD is None else
                        Segments(segments_BT, memory_segments_BS,
                                 packed=packed or memory_packed)))
    x_BTD = self.layers(x_BTD, ctx, rng)
    return self.final_norm(x_BTD) if self.pre_norm else x_BTD

  def empty_cache(self, batch_size: int, max_length: int, dtype, *, memory_BSD=None,
                  memory_segments_BS=None) -> DecodeCache:
    """An empty cache of ``max_length`` slots (with the encoder's keys/values, if given)."""
    zeros_BS = jnp.zeros((batch_size, max_length), jnp.int32)
    return DecodeCache(
        layers=self.layers.empty_cache(batch_size, max_length, dtype, memory_BSD),
        segments_BS=zeros_BS, positions_BS=zeros_BS, index=jnp.zeros((), jnp.int32),
        memory_segments_BS=memory_segments_BS)

  def decode(self, x_BTD, segments_BT, positions_BT,
             cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
    """The stack on T new tokens, written to cache slots index..index+T-1; returns (x, cache).

    A new token sees every filled slot up to its own that holds a token (segment != 0); unlike
    ``__call__`` there are no packed documents, so segment ids are only "token or padding".
    """
    start = cache.index
    segments_BS = jax.lax.dynamic_update_slice(
        cache.segments_BS, jnp.asarray(segments_BT, jnp.int32), (0, start))
    positions_BS = jax.lax.dynamic_update_slice(
        cache.positions_BS, jnp.asarray(positions_BT, jnp.int32), (0, start))
    slots_S = jnp.arange(segments_BS.shape[1])
    slots_T = start + jnp.arange(x_BTD.shape[1])
    visible_BTS = ((segments_BS[:, None, :] != 0)
                   & (slots_S[None, None, :] <= slots_T[None, :, None]))
    ctx = BlockContext(
        self_mask_B1TS=visible_BTS[:, None],
        positions_BT=positions_BT,
        self_bias_BNTS=(self.relative_bias(positions_BT, positions_BS)
                        if self.relative else None),
        cross_mask_B1TS=(None if cache.memory_segments_BS is None else
                         attention_mask(segments_BT, cache.memory_segments_BS, causal=False)),
        cache_index=start)
    x_BTD, layers = self.layers.decode(x_BTD, ctx, cache.layers)
    cache = cache.replace(layers=layers, segments_BS=segments_BS, positions_BS=positions_BS,
                          index=start + x_BTD.shape[1])
    return (self.final_norm(x_BTD) if self.pre_norm else x_BTD), cache


def _check_length(ids_BT, cfg: ModelConfig) -> None:
  if cfg.position == "learned" and ids_BT.shape[1] > cfg.max_len:
    raise ValueError(
        f"Sequence length {ids_BT.shape[1]} exceeds model.max_len={cfg.max_len} (the position "
        "table); truncate the inputs or use a model with a longer max_len.")


def _inputs(ids_BT, attention_mask_BT, segment_ids_BT, positions_BT):
  """Segments and positions, defaulting as Hugging Face does unless packing is explicit."""
  ids_BT = jnp.asarray(ids_BT, jnp.int32)
  segments_BT = segments_from_inputs(ids_BT, attention_mask_BT, segment_ids_BT)
  if positions_BT is None:
    positions_BT = (positions_from_segments(segments_BT) if segment_ids_BT is not None
                    else jnp.broadcast_to(jnp.arange(ids_BT.shape[1]), ids_BT.shape))
  return ids_BT, segments_BT, jnp.asarray(positions_BT, jnp.int32)


class Encoder(nnx.Module):
  """BERT-style bidirectional encoder with pooler and MLM / NSP / classification heads."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg = cfg.resolved()  # 'auto' settled for the backend JAX runs on
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.stack = Stack(cfg, cfg.num_layers, causal=False, cross=False, rngs=rngs)
    if cfg.pooler:
      self.pooler = Pooler(cfg, rngs=rngs)
    if cfg.head in ("lm", "pretraining"):
      self.mlm = MlmHead(cfg, rngs=rngs)
    if cfg.head == "pretraining":
      self.nsp = dense(cfg, cfg.d_model, 2, ("embed", None), rngs=rngs, use_bias=True)
    if cfg.head in ("sequence_classification", "token_classification"):
      self.classifier = Classifier(cfg, cfg.num_labels, rngs=rngs)

  @_with_precision
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None,
               positions=None, dropout_rng=None, mlm_positions=None) -> ModelOutput:
    """Encoder outputs; ``mlm_positions`` [B, P] limits the MLM logits to those positions."""
    _check_length(input_ids, self.cfg)
    ids_BT, segments_BT, positions_BT = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BTD = self.embeddings(ids_BT, positions_BT, token_type_ids, _rng(dropout_rng, 0))
    x_BTD = self.stack(x_BTD, segments_BT, positions_BT, _rng(dropout_rng, 1),
                       packed=segment_ids is not None)
    summary_BD = (x_BTD[:, 0] if self.cfg.pooling == "cls"
                  else mean_of_tokens(x_BTD, segments_BT))
    pooled_BD = self.pooler(summary_BD) if self.cfg.pooler else None
    head, logits, nsp = self.cfg.head, None, None
    if head in ("lm", "pretraining"):
      x_BPD = (x_BTD if mlm_positions is None
               else jnp.take_along_axis(x_BTD, mlm_positions[..., None], axis=1))
      logits = self.mlm(x_BPD, self.embeddings.token)
    if head == "pretraining":
      nsp = self.nsp(pooled_BD if pooled_BD is not None else summary_BD).astype(jnp.float32)
    if head == "sequence_classification":
      logits = self.classifier(pooled_BD if pooled_BD is not None else summary_BD,
                               _rng(dropout_rng, 2))
    if head == "token_classification":
      logits = self.classifier(x_BTD, _rng(dropout_rng, 2))
    return ModelOutput(hidden_states=x_BTD,
                       logits=None if logits is None else logits.astype(jnp.float32),
                       pooled=pooled_BD, nsp_logits=nsp)


def _lm_logits(cfg: ModelConfig, x_BTD, embeddings: Embeddings, lm_head) -> jax.Array:
  """Vocabulary logits: tied (T5 rescales by d_model**-0.5 first) or an untied projection."""
  if cfg.tie_embeddings:
    if cfg.family == "encoder_decoder":
      x_BTD = x_BTD * (cfg.d_model ** -0.5)
    logits_BTV = embeddings.token.attend(x_BTD)
  else:
    logits_BTV = lm_head(x_BTD)
  return sharding.constrain(logits_BTV, ("batch", "length", "vocab")).astype(jnp.float32)


class Decoder(nnx.Module):
  """GPT-2-style causal decoder; RoPE/RMSNorm/SwiGLU/GQA options give a LLaMA-style one."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg = cfg.resolved()  # 'auto' settled for the backend JAX runs on
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.stack = Stack(cfg, cfg.num_layers, causal=True, cross=False, rngs=rngs)
    if cfg.head == "lm" and not cfg.tie_embeddings:
      self.lm_head = dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"), rngs=rngs,
                           use_bias=False)
    if cfg.head in ("sequence_classification", "token_classification"):
      self.classifier = Classifier(cfg, cfg.num_labels, rngs=rngs)

  @_with_precision
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None,
               positions=None, dropout_rng=None) -> ModelOutput:
    _check_length(input_ids, self.cfg)
    ids_BT, segments_BT, positions_BT = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BTD = self.embeddings(ids_BT, positions_BT, token_type_ids, _rng(dropout_rng, 0))
    x_BTD = self.stack(x_BTD, segments_BT, positions_BT, _rng(dropout_rng, 1),
                       packed=segment_ids is not None)
    logits = None
    if self.cfg.head == "lm":
      logits = _lm_logits(self.cfg, x_BTD, self.embeddings, getattr(self, "lm_head", None))
    if self.cfg.head == "sequence_classification":
      summary_BD = (last_token(x_BTD, segments_BT) if self.cfg.pooling == "cls"
                    else mean_of_tokens(x_BTD, segments_BT))
      logits = self.classifier(summary_BD, _rng(dropout_rng, 2))
    if self.cfg.head == "token_classification":
      logits = self.classifier(x_BTD, _rng(dropout_rng, 2))
    return ModelOutput(hidden_states=x_BTD,
                       logits=None if logits is None else logits.astype(jnp.float32))

  def init_cache(self, batch_size: int, max_length: int) -> DecodeCache:
    """An empty KV cache of ``max_length`` slots for ``decode_step``."""
    return self.stack.empty_cache(batch_size, max_length, jnp.dtype(self.cfg.dtype))

  @_with_precision
  def decode_step(self, input_ids, cache: DecodeCache, *, positions,
                  attention_mask=None) -> tuple[ModelOutput, DecodeCache]:
    """New tokens (the prompt, then one per step) against ``cache``; returns (output, cache).

    ``attention_mask`` marks padding among the new tokens (0: never attended to later).
    """
    ids_BT = jnp.asarray(input_ids, jnp.int32)
    segments_BT = segments_from_inputs(ids_BT, attention_mask)
    positions_BT = jnp.asarray(positions, jnp.int32)
    x_BTD = self.embeddings(ids_BT, positions_BT, None, None)
    x_BTD, cache = self.stack.decode(x_BTD, segments_BT, positions_BT, cache)
    logits = None
    if self.cfg.head == "lm":
      logits = _lm_logits(self.cfg, x_BTD, self.embeddings, getattr(self, "lm_head", None))
    return ModelOutput(hidden_states=x_BTD, logits=logits), cache


class EncoderDecoder(nnx.Module):
  """T5: shared embedding, bidirectional encoder, causal decoder with cross-attention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg = cfg.resolved()  # 'auto' settled for the backend JAX runs on
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.encoder = Stack(cfg, cfg.num_layers, causal=False, cross=False, rngs=rngs)
    self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"), rngs=rngs,
                           use_bias=False)

  @_with_precision
  def encode(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None,
             dropout_rng=None) -> jax.Array:
    """Encoder hidden states (B, S, D)."""
    ids_BS, segments_BS, positions_BS = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BSD = self.embeddings(ids_BS, positions_BS, None, _rng(dropout_rng, 0))
    return self.encoder(x_BSD, segments_BS, positions_BS, _rng(dropout_rng, 1),
                        packed=segment_ids is not None)

  @_with_precision
  def decode(self, decoder_input_ids, memory_BSD, attention_mask=None,
             decoder_attention_mask=None, *, segment_ids=None, decoder_segment_ids=None,
             decoder_positions=None, dropout_rng=None) -> ModelOutput:
    """Decoder pass over encoder output ``memory_BSD``; ``attention_mask`` is the encoder's."""
    memory_segments_BS = segments_from_inputs(memory_BSD[..., 0], attention_mask, segment_ids)
    ids_BT, segments_BT, positions_BT = _inputs(
        decoder_input_ids, decoder_attention_mask, decoder_segment_ids, decoder_positions)
    y_BTD = self.embeddings(ids_BT, positions_BT, None, _rng(dropout_rng, 2))
    y_BTD = self.decoder(y_BTD, segments_BT, positions_BT, _rng(dropout_rng, 3),
                         memory_BSD=memory_BSD, memory_segments_BS=memory_segments_BS,
                         packed=decoder_segment_ids is not None,
                         memory_packed=segment_ids is not None)
    logits = _lm_logits(self.cfg, y_BTD, self.embeddings, getattr(self, "lm_head", None))
    return ModelOutput(hidden_states=y_BTD, logits=logits, encoder_hidden_states=memory_BSD)

  @_with_precision
  def __call__(self, input_ids, attention_mask=None, *, decoder_input_ids,
               decoder_attention_mask=None, segment_ids=None, positions=None,
               decoder_segment_ids=None, decoder_positions=None,
               dropout_rng=None) -> ModelOutput:
    memory_BSD = self.encode(input_ids, attention_mask, segment_ids=segment_ids,
                             positions=positions, dropout_rng=dropout_rng)
    return self.decode(decoder_input_ids, memory_BSD, attention_mask, decoder_attention_mask,
                       segment_ids=segment_ids, decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, dropout_rng=dropout_rng)

  def init_cache(self, memory_BSD, attention_mask, max_length: int) -> DecodeCache:
    """An empty decoder KV cache of ``max_length`` slots holding the encoder's cross keys/values."""
    memory_segments_BS = segments_from_inputs(memory_BSD[..., 0], attention_mask)
    return self.decoder.empty_cache(
        memory_BSD.shape[0], max_length, jnp.dtype(self.cfg.dtype), memory_BSD=memory_BSD,
        memory_segments_BS=memory_segments_BS)

  @_with_precision
  def decode_step(self, decoder_input_ids, cache: DecodeCache, *,
                  positions) -> tuple[ModelOutput, DecodeCache]:
    """New decoder tokens against ``cache`` (from ``init_cache``); returns (output, cache)."""
    ids_BT = jnp.asarray(decoder_input_ids, jnp.int32)
    positions_BT = jnp.asarray(positions, jnp.int32)
    y_BTD = self.embeddings(ids_BT, positions_BT, None, None)
    y_BTD, cache = self.decoder.decode(y_BTD, jnp.ones_like(ids_BT), positions_BT, cache)
    logits = _lm_logits(self.cfg, y_BTD, self.embeddings, getattr(self, "lm_head", None))
    return ModelOutput(hidden_states=y_BTD, logits=logits), cache


FAMILY_CLASSES = {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}


def build_model(cfg: ModelConfig, rngs: nnx.Rngs | int = 0) -> nnx.Module:
  """Creates the family's model with freshly initialised parameters."""
  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs)
  return FAMILY_CLASSES[cfg.family](cfg, rngs=rngs)
