"""The search loops: greedy / sampling (temperature, top-k, top-p) and beam search.

Each loop is one ``lax.while_loop`` with fixed shapes that stops as soon as every row is done,
and drives a stepper (``steppers.py``) that hides the model, the family and the cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm_research.decoding.config import DecodeConfig, DecodeOutput


def filter_logits(logits_BV: jax.Array, cfg: DecodeConfig) -> jax.Array:
  """Logits / temperature, with tokens outside the top-k and the top-p nucleus set to -inf."""
  logits_BV = logits_BV / cfg.temperature
  if cfg.top_k > 0:
    kth_B1 = jax.lax.top_k(logits_BV, min(cfg.top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if cfg.top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # A token is in the nucleus when the tokens ranked above it hold less than top_p; the
    # most likely token always is, so the set is never empty.
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    threshold_B1 = jnp.min(jnp.where(before_BV < cfg.top_p, sorted_BV, jnp.inf), axis=-1,
                           keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
  return logits_BV


def pick_tokens(logits_BV: jax.Array, rng: jax.Array, cfg: DecodeConfig) -> jax.Array:
  """Greedy argmax, or a draw from the filtered distribution when sampling."""
  if not cfg.samples:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BV, cfg)).astype(jnp.int32)


def sample(stepper, ids_BT, mask_BT, cfg: DecodeConfig, rng: jax.Array) -> DecodeOutput:
  """Greedy or sampled decoding; scores are log-probs under the model (temperature 1)."""
  b, n = ids_BT.shape[0], cfg.max_new_tokens
  logits_BV, state = stepper.start(ids_BT, mask_BT)
  init = dict(i=jnp.zeros((), jnp.int32), logits=logits_BV, state=state, rng=rng,
              tokens=jnp.full((b, n), cfg.pad_id, jnp.int32), done=jnp.zeros((b,), bool),
              lengths=jnp.zeros((b,), jnp.int32), scores=jnp.zeros((b,), jnp.float32))

  def body(c):
    rng, key = jax.random.split(c["rng"])
    token_B = pick_tokens(c["logits"], key, cfg)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(c["logits"]), token_B[:, None], axis=1)[:, 0]
    live_B = ~c["done"]
    token_B = jnp.where(live_B, token_B, cfg.pad_id)
    logits_BV, state = stepper.advance(c["state"], token_B)
    return dict(i=c["i"] + 1, logits=logits_BV, state=state, rng=rng,
                tokens=c["tokens"].at[:, c["i"]].set(token_B),
                done=c["done"] | cfg.is_eos(token_B),
                lengths=c["lengths"] + live_B, scores=c["scores"] + jnp.where(live_B, logp_B, 0))

  out = jax.lax.while_loop(lambda c: (c["i"] < n) & ~jnp.all(c["done"]), body, init)
  return DecodeOutput(tokens=out["tokens"], lengths=out["lengths"], scores=out["scores"])


def beam_search(stepper, ids_BT, mask_BT, cfg: DecodeConfig) -> DecodeOutput:
  """Beam search over ``num_beams`` live hypotheses per row, returning each row's best.

  Each step ranks the 2W best extensions of the W live hypotheses. As in Hugging Face, one
  ending in EOS finishes (scored sum log-prob / length**length_penalty, length counting the
  EOS) only if it ranks among the first W; the W best others stay live. A row is done once
  no live hypothesis can beat its best finished one at any length up to max_new_tokens; rows
  still live at the end compete with their live hypotheses at full length.
  """
  b, w, n = ids_BT.shape[0], cfg.num_beams, cfg.max_new_tokens
  logits_BV, state = stepper.start(ids_BT, mask_BT)
  v = logits_BV.shape[-1]
  # Prompts are processed once per row, then copied to every beam.
  state = stepper.take_rows(state, jnp.repeat(jnp.arange(b), w))
  penalty = lambda length: jnp.asarray(length, jnp.float32) ** cfg.length_penalty  # noqa: E731
  init = dict(
      i=jnp.zeros((), jnp.int32), logits=jnp.repeat(logits_BV, w, axis=0), state=state,
      # Only beam 0 is live at first: identical copies would fill the beam with duplicates.
      live_logp=jnp.where(jnp.arange(w) == 0, 0.0, -jnp.inf)[None].repeat(b, 0),
      live_tokens=jnp.full((b, w, n), cfg.pad_id, jnp.int32),
      best_tokens=jnp.full((b, n), cfg.pad_id, jnp.int32),
      best_score=jnp.full((b,), -jnp.inf), best_len=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool))

  def body(c):
    i, length = c["i"], c["i"] + 1
    logp_BWV = jax.nn.log_softmax(c["logits"]).reshape(b, w, v)
    cand_BWV = c["live_logp"][:, :, None] + logp_BWV
    top_logp_BC, top_idx_BC = jax.lax.top_k(cand_BWV.reshape(b, w * v), 2 * w)
    beam_BC, token_BC = top_idx_BC // v, (top_idx_BC % v).astype(jnp.int32)
    seqs_BCN = jnp.take_along_axis(c["live_tokens"], beam_BC[:, :, None], axis=1)
    seqs_BCN = seqs_BCN.at[:, :, i].set(token_BC)
    is_eos_BC = cfg.is_eos(token_BC)
    # Finished: EOS among the first W candidates; keep the row's best one.
    fin_BC = jnp.where(is_eos_BC & (jnp.arange(2 * w) < w), top_logp_BC / penalty(length),
                       -jnp.inf)
    j_B = jnp.argmax(fin_BC, axis=1)
    fin_B = jnp.take_along_axis(fin_BC, j_B[:, None], axis=1)[:, 0]
    better_B = fin_B > c["best_score"]
    fin_tokens_BN = jnp.take_along_axis(seqs_BCN, j_B[:, None, None], axis=1)[:, 0]
    # Live: the W best candidates not ending in EOS (sorted, so beam 0 is the best).
    live_logp_BW, k_BW = jax.lax.top_k(jnp.where(is_eos_BC, -jnp.inf, top_logp_BC), w)
    source_BW = jnp.take_along_axis(beam_BC, k_BW, axis=1)
    state = stepper.take_rows(c["state"], (jnp.arange(b)[:, None] * w + source_BW).reshape(-1))
    logits, state = stepper.advance(state, jnp.take_along_axis(token_BC, k_BW, 1).reshape(-1))
    best_score = jnp.where(better_B, fin_B, c["best_score"])
    # Log-probs only fall, so a live hypothesis's best future score is at length now or n.
    bound_B = jnp.maximum(live_logp_BW[:, 0] / penalty(length), live_logp_BW[:, 0] / penalty(n))
    return dict(
        i=length, logits=logits, state=state, live_logp=live_logp_BW,
        live_tokens=jnp.take_along_axis(seqs_BCN, k_BW[:, :, None], axis=1),
        best_tokens=jnp.where(better_B[:, None], fin_tokens_BN, c["best_tokens"]),
        best_score=best_score, best_len=jnp.where(better_B, length, c["best_len"]),
        done=best_score >= bound_B)

  out = jax.lax.while_loop(lambda c: (c["i"] < n) & ~jnp.all(c["done"]), body, init)
  live_score_B = out["live_logp"][:, 0] / penalty(out["i"])
  use_live_B = live_score_B > out["best_score"]
  return DecodeOutput(
      tokens=jnp.where(use_live_B[:, None], out["live_tokens"][:, 0], out["best_tokens"]),
      lengths=jnp.where(use_live_B, out["i"], out["best_len"]).astype(jnp.int32),
      scores=jnp.where(use_live_B, live_score_B, out["best_score"]).astype(jnp.float32))
