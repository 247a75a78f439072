"""One interface over the model for the search loops: start on the prompts, advance a token.

Four implementations: decoder or encoder-decoder, with a KV cache or recomputing the whole
fixed-size sequence every step (``use_cache=False``, the reference). Each keeps its state in a
pytree of fixed shape, so a search loop can carry it through ``lax.while_loop``, and can
select batch rows of it (beam search expands and reorders hypotheses with ``take_rows``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lm_research.decoding.config import DecodeConfig
from lm_research.models.transformer import DecodeCache


def _rows(tree, rows_R):
  return jax.tree.map(lambda a: jnp.take(a, rows_R, axis=0), tree)


@struct.dataclass
class CachedState:
  """Decoder with a cache: the cache and each row's next token position."""

  cache: DecodeCache
  positions_B: jax.Array


@struct.dataclass
class FullState:
  """No cache: the whole sequence so far (fixed size) and how many slots of it are filled."""

  tokens_BS: jax.Array
  filled_B: jax.Array
  memory_BSD: jax.Array | None = None  # encoder-decoder: the encoder output and its mask
  memory_mask_BS: jax.Array | None = None


class DecoderCached:
  """Decoder with a KV cache of T + max_new_tokens slots."""

  def __init__(self, model: nnx.Module, cfg: DecodeConfig):
    self.model, self.cfg = model, cfg

  def start(self, ids_BT, mask_BT):
    """Runs the prompts into the cache; returns (next-token logits (B, V), state)."""
    b, t = ids_BT.shape
    len_B = mask_BT.sum(axis=1)
    # Right -> left padding: roll each row right by its padding so every prompt ends at slot
    # T-1; then each step writes the same cache slot for all rows (one dynamic_update_slice).
    src_BT = (jnp.arange(t)[None, :] - (t - len_B)[:, None]) % t
    ids_BT = jnp.take_along_axis(ids_BT, src_BT, axis=1)
    mask_BT = jnp.take_along_axis(mask_BT, src_BT, axis=1)
    positions_BT = jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0)
    cache = self.model.init_cache(b, t + self.cfg.max_new_tokens)
    out, cache = self.model.decode_step(ids_BT, cache, positions=positions_BT,
                                        attention_mask=mask_BT)
    return out.logits[:, -1], CachedState(cache=cache, positions_B=len_B)

  def advance(self, state: CachedState, token_B):
    """Feeds one token per row; returns (next-token logits, state)."""
    out, cache = self.model.decode_step(token_B[:, None], state.cache,
                                        positions=state.positions_B[:, None])
    return out.logits[:, 0], CachedState(cache=cache, positions_B=state.positions_B + 1)

  def take_rows(self, state: CachedState, rows_R):
    """The state of batch rows ``rows_R``."""
    return CachedState(cache=state.cache.take_rows(rows_R),
                       positions_B=jnp.take(state.positions_B, rows_R))


class DecoderFull:
  """Decoder without a cache: each step runs the model over all T + max_new_tokens slots.

  Rows stay right-padded and the model's own ``attention_mask`` handling is used, so this
  path shares none of the cache path's bookkeeping and serves as its reference.
  """

  def __init__(self, model: nnx.Module, cfg: DecodeConfig):
    self.model, self.cfg = model, cfg

  def _logits(self, tokens_BS, filled_B):
    mask_BS = jnp.arange(tokens_BS.shape[1])[None, :] < filled_B[:, None]
    logits_BSV = self.model(tokens_BS, attention_mask=mask_BS.astype(jnp.int32)).logits
    return jnp.take_along_axis(logits_BSV, (filled_B - 1)[:, None, None], axis=1)[:, 0]

  def start(self, ids_BT, mask_BT):
    """Returns (next-token logits (B, V), state) for the prompts."""
    tokens_BS = jnp.pad(ids_BT, ((0, 0), (0, self.cfg.max_new_tokens)),
                        constant_values=self.cfg.pad_id)
    filled_B = mask_BT.sum(axis=1)
    return self._logits(tokens_BS, filled_B), FullState(tokens_BS=tokens_BS, filled_B=filled_B)

  def advance(self, state: FullState, token_B):
    """Appends one token per row after its last filled slot; returns (logits, state)."""
    tokens_BS = state.tokens_BS.at[jnp.arange(token_B.shape[0]), state.filled_B].set(token_B)
    filled_B = state.filled_B + 1
    return self._logits(tokens_BS, filled_B), FullState(tokens_BS=tokens_BS, filled_B=filled_B)

  def take_rows(self, state: FullState, rows_R):
    """The state of batch rows ``rows_R``."""
    return _rows(state, rows_R)


class Seq2SeqCached:
  """Encoder-decoder with a KV cache: encode once, decoder starts from ``pad_id``.

  The cache has max_new_tokens + 1 slots: the start token, then every generated token is fed
  back (the last one needlessly, which keeps the loop body branch-free).
  """

  def __init__(self, model: nnx.Module, cfg: DecodeConfig):
    self.model, self.cfg = model, cfg

  def _step(self, token_B, cache: DecodeCache):
    positions_B1 = jnp.broadcast_to(cache.index, token_B.shape)[:, None]
    out, cache = self.model.decode_step(token_B[:, None], cache, positions=positions_B1)
    return out.logits[:, 0], cache

  def start(self, ids_BT, mask_BT):
    """Encodes the inputs, feeds the start token; returns (logits (B, V), cache)."""
    memory_BSD = self.model.encode(ids_BT, mask_BT)
    cache = self.model.init_cache(memory_BSD, mask_BT, self.cfg.max_new_tokens + 1)
    return self._step(jnp.full(ids_BT.shape[:1], self.cfg.pad_id, jnp.int32), cache)

  def advance(self, cache: DecodeCache, token_B):
    """Feeds one token per row; returns (next-token logits, cache)."""
    return self._step(token_B, cache)

  def take_rows(self, cache: DecodeCache, rows_R):
    """The cache of batch rows ``rows_R``."""
    return cache.take_rows(rows_R)


class Seq2SeqFull:
  """Encoder-decoder without a cache: every step reruns the decoder over all slots."""

  def __init__(self, model: nnx.Module, cfg: DecodeConfig):
    self.model, self.cfg = model, cfg

  def _logits(self, state: FullState):
    logits_BSV = self.model.decode(state.tokens_BS, state.memory_BSD,
                                   state.memory_mask_BS).logits
    return jnp.take_along_axis(logits_BSV, (state.filled_B - 1)[:, None, None], axis=1)[:, 0]

  def start(self, ids_BT, mask_BT):
    """Encodes the inputs once; returns (logits after the start token, state)."""
    b = ids_BT.shape[0]
    state = FullState(
        tokens_BS=jnp.full((b, self.cfg.max_new_tokens + 1), self.cfg.pad_id, jnp.int32),
        filled_B=jnp.ones((b,), jnp.int32), memory_BSD=self.model.encode(ids_BT, mask_BT),
        memory_mask_BS=mask_BT)
    return self._logits(state), state

  def advance(self, state: FullState, token_B):
    """Appends one token per row; returns (logits, state)."""
    state = state.replace(
        tokens_BS=state.tokens_BS.at[jnp.arange(token_B.shape[0]), state.filled_B].set(token_B),
        filled_B=state.filled_B + 1)
    return self._logits(state), state

  def take_rows(self, state: FullState, rows_R):
    """The state of batch rows ``rows_R``."""
    return _rows(state, rows_R)


def make_stepper(model: nnx.Module, cfg: DecodeConfig):
  """The stepper for this model family and ``cfg.use_cache``."""
  seq2seq = model.cfg.family == "encoder_decoder"
  if cfg.use_cache:
    return (Seq2SeqCached if seq2seq else DecoderCached)(model, cfg)
  return (Seq2SeqFull if seq2seq else DecoderFull)(model, cfg)
