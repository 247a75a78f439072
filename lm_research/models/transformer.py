"""The three model families: Encoder (BERT), Decoder (GPT-2 / LLaMA-style), EncoderDecoder (T5).

Each is called like its Hugging Face counterpart and returns a ``ModelOutput``. Dropout is
active only when a ``dropout_rng`` is given, so evaluation is deterministic by default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lm_research import sharding
from lm_research.models.attention import (RelativePositionBias, attention_mask,
                                          positions_from_segments, segments_from_inputs)
from lm_research.models.blocks import BlockContext, LayerStack
from lm_research.models.config import ModelConfig
from lm_research.models.heads import Classifier, MlmHead, Pooler, last_token
from lm_research.models.layers import Norm, dense, dropout, normal_init


@struct.dataclass
class ModelOutput:
  """Final-layer hidden states, the head's logits, and family extras."""

  hidden_states: jax.Array
  logits: jax.Array | None = None
  pooled: jax.Array | None = None
  nsp_logits: jax.Array | None = None
  encoder_hidden_states: jax.Array | None = None


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
    x_BTD = dropout(x_BTD, self.rate, rng)
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
               memory_segments_BS=None) -> jax.Array:
    ctx = BlockContext(
        self_mask_B1TS=attention_mask(segments_BT, segments_BT, causal=self.causal),
        positions_BT=positions_BT,
        self_bias_BNTS=(self.relative_bias(positions_BT, positions_BT)
                        if self.relative else None),
        memory_BSD=memory_BSD,
        cross_mask_B1TS=(None if memory_BSD is None else
                         attention_mask(segments_BT, memory_segments_BS, causal=False)))
    x_BTD = self.layers(x_BTD, ctx, rng)
    return self.final_norm(x_BTD) if self.pre_norm else x_BTD


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
    self.cfg = cfg
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

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None,
               positions=None, dropout_rng=None) -> ModelOutput:
    _check_length(input_ids, self.cfg)
    ids_BT, segments_BT, positions_BT = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BTD = self.embeddings(ids_BT, positions_BT, token_type_ids, _rng(dropout_rng, 0))
    x_BTD = self.stack(x_BTD, segments_BT, positions_BT, _rng(dropout_rng, 1))
    pooled_BD = self.pooler(x_BTD) if self.cfg.pooler else None
    head, logits, nsp = self.cfg.head, None, None
    if head in ("lm", "pretraining"):
      logits = self.mlm(x_BTD, self.embeddings.token)
    if head == "pretraining":
      nsp = self.nsp(pooled_BD if pooled_BD is not None else x_BTD[:, 0]).astype(jnp.float32)
    if head == "sequence_classification":
      logits = self.classifier(pooled_BD if pooled_BD is not None else x_BTD[:, 0],
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
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.stack = Stack(cfg, cfg.num_layers, causal=True, cross=False, rngs=rngs)
    if cfg.head == "lm" and not cfg.tie_embeddings:
      self.lm_head = dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"), rngs=rngs,
                           use_bias=False)
    if cfg.head in ("sequence_classification", "token_classification"):
      self.classifier = Classifier(cfg, cfg.num_labels, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None,
               positions=None, dropout_rng=None) -> ModelOutput:
    _check_length(input_ids, self.cfg)
    ids_BT, segments_BT, positions_BT = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BTD = self.embeddings(ids_BT, positions_BT, token_type_ids, _rng(dropout_rng, 0))
    x_BTD = self.stack(x_BTD, segments_BT, positions_BT, _rng(dropout_rng, 1))
    logits = None
    if self.cfg.head == "lm":
      logits = _lm_logits(self.cfg, x_BTD, self.embeddings, getattr(self, "lm_head", None))
    if self.cfg.head == "sequence_classification":
      logits = self.classifier(last_token(x_BTD, segments_BT), _rng(dropout_rng, 2))
    if self.cfg.head == "token_classification":
      logits = self.classifier(x_BTD, _rng(dropout_rng, 2))
    return ModelOutput(hidden_states=x_BTD,
                       logits=None if logits is None else logits.astype(jnp.float32))


class EncoderDecoder(nnx.Module):
  """T5: shared embedding, bidirectional encoder, causal decoder with cross-attention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.encoder = Stack(cfg, cfg.num_layers, causal=False, cross=False, rngs=rngs)
    self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"), rngs=rngs,
                           use_bias=False)

  def encode(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None,
             dropout_rng=None) -> jax.Array:
    """Encoder hidden states (B, S, D)."""
    ids_BS, segments_BS, positions_BS = _inputs(input_ids, attention_mask, segment_ids, positions)
    x_BSD = self.embeddings(ids_BS, positions_BS, None, _rng(dropout_rng, 0))
    return self.encoder(x_BSD, segments_BS, positions_BS, _rng(dropout_rng, 1))

  def decode(self, decoder_input_ids, memory_BSD, attention_mask=None,
             decoder_attention_mask=None, *, segment_ids=None, decoder_segment_ids=None,
             decoder_positions=None, dropout_rng=None) -> ModelOutput:
    """Decoder pass over encoder output ``memory_BSD``; ``attention_mask`` is the encoder's."""
    memory_segments_BS = segments_from_inputs(memory_BSD[..., 0], attention_mask, segment_ids)
    ids_BT, segments_BT, positions_BT = _inputs(
        decoder_input_ids, decoder_attention_mask, decoder_segment_ids, decoder_positions)
    y_BTD = self.embeddings(ids_BT, positions_BT, None, _rng(dropout_rng, 2))
    y_BTD = self.decoder(y_BTD, segments_BT, positions_BT, _rng(dropout_rng, 3),
                         memory_BSD=memory_BSD, memory_segments_BS=memory_segments_BS)
    logits = _lm_logits(self.cfg, y_BTD, self.embeddings, getattr(self, "lm_head", None))
    return ModelOutput(hidden_states=y_BTD, logits=logits, encoder_hidden_states=memory_BSD)

  def __call__(self, input_ids, attention_mask=None, *, decoder_input_ids,
               decoder_attention_mask=None, segment_ids=None, positions=None,
               decoder_segment_ids=None, decoder_positions=None,
               dropout_rng=None) -> ModelOutput:
    memory_BSD = self.encode(input_ids, attention_mask, segment_ids=segment_ids,
                             positions=positions, dropout_rng=dropout_rng)
    return self.decode(decoder_input_ids, memory_BSD, attention_mask, decoder_attention_mask,
                       segment_ids=segment_ids, decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, dropout_rng=dropout_rng)


FAMILY_CLASSES = {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}


def build_model(cfg: ModelConfig, rngs: nnx.Rngs | int = 0) -> nnx.Module:
  """Creates the family's model with freshly initialised parameters."""
  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs)
  return FAMILY_CLASSES[cfg.family](cfg, rngs=rngs)
