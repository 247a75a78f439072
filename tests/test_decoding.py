"""Decoding tests on tiny models: KV cache vs full recompute, padding, EOS, sampling, beam search.

Every check compares against an independent path: the no-cache search (the model's own forward
over the whole sequence), prompts decoded one by one, or plain-Python greedy / beam search over
full forward passes (``next_logprobs``). Results are memoised per (model, config) so the ~20
compiled searches are each built once.
"""

import functools

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE
from flax import nnx

from lm_research import decoding, sharding
from lm_research.models import ModelConfig, build_model, layout

VOCAB, N = 64, 8
# initializer_range 0.2: sharper random distributions, so greedy paths vary instead of repeating.
GPT2 = dict(family="decoder", vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            max_len=16, activation="gelu_tanh", initializer_range=0.2)
LLAMA = dict(GPT2, position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
             num_kv_heads=2, use_bias=False, tie_embeddings=False)
T5 = dict(family="encoder_decoder", vocab_size=VOCAB, d_model=32, num_layers=2,
          num_decoder_layers=2, num_heads=4, head_dim=8, d_ff=64, position="relative",
          norm="rmsnorm", norm_eps=1e-6, activation="relu", use_bias=False, attention_scale=1.0,
          initializer_range=0.2, rel_buckets=8, rel_max_distance=16, tie_embeddings=False)
CONFIGS = {"gpt2": GPT2, "llama": LLAMA, "t5": T5, "llama_scan": dict(LLAMA, scan_layers=True)}

# Right-padded prompts of lengths 6 and 3 (pad id 0), as a tokenizer produces them.
IDS = np.array([[5, 9, 14, 3, 22, 7], [8, 4, 2, 0, 0, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)
LENGTHS = MASK.sum(1)



pytestmark = pytest.mark.usefixtures("fast_decoding_compiles")


@functools.lru_cache(maxsize=None)
def model(name: str) -> nnx.Module:
  """The named tiny model; the scanned LLaMA carries the looped one's weights."""
  if name == "llama_scan":  # abstract init: its own random weights would be replaced anyway
    m = nnx.eval_shape(lambda: build_model(ModelConfig(**CONFIGS[name]), 0))
    layout.set_params(m, layout.get_params(model("llama")))
    return m
  return build_model(ModelConfig(**CONFIGS[name]), 0)


@functools.lru_cache(maxsize=None)
def run(name: str, rows: tuple = (0, 1), rng_seed: int | None = None,
        **options) -> decoding.DecodeOutput:
  """generate() on some rows of the shared prompts (trimmed to their longest), as numpy."""
  options = dict(dict(max_new_tokens=N, eos_id=-1), **options)
  width = LENGTHS[list(rows)].max()
  rng = None if rng_seed is None else jax.random.key(rng_seed)
  out = decoding.generate(model(name), IDS[list(rows), :width], MASK[list(rows), :width],
                          decoding.DecodeConfig(**options), rng=rng)
  return jax.tree.map(np.asarray, out)


def greedy_eos(name: str) -> int:
  """An EOS id that greedy decoding emits mid-way (row 0's third token), so EOS takes effect."""
  return int(run(name, strategy="greedy").tokens[0, 2])


# --- independent reference: plain Python searches over full forward passes -------------------

@functools.lru_cache(maxsize=None)
def _forward(graphdef, family: str):
  """One jitted full forward pass (fixed shapes) returning log-probs at every position."""
  def fwd(state, ids, mask, dec_ids):
    m = nnx.merge(graphdef, state)
    if family == "decoder":
      logits = m(ids, attention_mask=mask).logits
    else:
      logits = m(ids, mask, decoder_input_ids=dec_ids).logits
    return jax.nn.log_softmax(logits)
  return jax.jit(fwd, compiler_options=FAST_COMPILE)


def next_logprobs(name: str, row: int, hyps: list[tuple]) -> np.ndarray:
  """(len(hyps), V) log-probs of the token after each hypothesis for prompt ``row``."""
  m, rows = model(name), 4
  graphdef, state = nnx.split(m)
  ids = np.zeros((rows, IDS.shape[1] + N), np.int32)
  mask = np.zeros_like(ids)
  dec = np.zeros((rows, N + 1), np.int32)  # T5: start token (pad id 0), then the hypothesis
  at = []
  for r, hyp in enumerate(hyps):
    if m.cfg.family == "decoder":
      seq = list(IDS[row, :LENGTHS[row]]) + list(hyp)
      ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
      at.append(len(seq) - 1)
    else:
      ids[r, :IDS.shape[1]], mask[r, :IDS.shape[1]] = IDS[row], MASK[row]
      dec[r, 1:1 + len(hyp)] = hyp
      at.append(len(hyp))
  if m.cfg.family == "encoder_decoder":
    ids, mask = ids[:, :IDS.shape[1]], mask[:, :IDS.shape[1]]
  logp = np.asarray(_forward(graphdef, m.cfg.family)(state, ids, mask, dec))
  return np.stack([logp[r, at[r]] for r in range(len(hyps))])


def reference_greedy(name: str, row: int, eos: int) -> tuple[list, float]:
  """Greedy tokens (through EOS) and their summed log-prob, one full forward per token."""
  hyp, score = (), 0.0
  for _ in range(N):
    logp = next_logprobs(name, row, [hyp])[0]
    token = int(np.argmax(logp))
    hyp, score = hyp + (token,), score + float(logp[token])
    if token == eos:
      break
  return list(hyp), score


def reference_beam(name: str, row: int, width: int, eos: int, alpha: float) -> tuple[list, float]:
  """Hugging Face-style beam search run to max length, with no early stopping."""
  live = [((), 0.0)]
  best = (None, -np.inf)
  for step in range(N):
    logp = next_logprobs(name, row, [h for h, _ in live])
    cands = [(s + float(logp[i, v]), h + (v,)) for i, (h, s) in enumerate(live)
             for v in range(VOCAB)]
    order = np.argsort([-c[0] for c in cands], kind="stable")[:2 * width]
    top = [cands[i] for i in order]
    for rank, (s, h) in enumerate(top):
      if h[-1] == eos and rank < width and s / (step + 1) ** alpha > best[1]:
        best = (list(h), s / (step + 1) ** alpha)
    live = [(h, s) for s, h in top if h[-1] != eos][:width]
  if live[0][1] / N ** alpha > best[1]:
    best = (list(live[0][0]), live[0][1] / N ** alpha)
  return best


def padded(tokens: list) -> list:
  """Tokens followed by pad ids (0) up to N, as generate returns them."""
  return tokens + [0] * (N - len(tokens))


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_kv_cache_greedy_matches_full_recompute(name):
  """Greedy with the KV cache gives the no-cache (whole-sequence forward) tokens and scores."""
  cached = run(name, strategy="greedy", use_cache=True)
  full = run(name, strategy="greedy", use_cache=False)
  np.testing.assert_array_equal(cached.tokens, full.tokens)
  np.testing.assert_array_equal(cached.lengths, [N, N])
  np.testing.assert_allclose(cached.scores, full.scores, rtol=1e-5)
  assert len(set(cached.tokens[0])) > 2  # a varied path, so a wrong cache would show


def test_batched_padded_prompts_match_one_by_one():
  """Right-padded prompts of different lengths decode as each prompt alone (no padding)."""
  batched = run("gpt2", strategy="greedy")
  for row in (0, 1):
    alone = run("gpt2", rows=(row,), strategy="greedy")
    np.testing.assert_array_equal(batched.tokens[row], alone.tokens[0])
    np.testing.assert_allclose(batched.scores[row], alone.scores[0], rtol=1e-5)


def test_eos_stops_a_row_and_matches_reference(name="gpt2"):
  """After EOS a row gets pad ids; tokens, lengths and scores match a plain Python greedy."""
  eos = greedy_eos(name)
  free, out = run(name, strategy="greedy"), run(name, strategy="greedy", eos_id=eos)
  for row in (0, 1):
    hits = np.flatnonzero(free.tokens[row] == eos)
    length = hits[0] + 1 if hits.size else N
    assert out.lengths[row] == length
    np.testing.assert_array_equal(out.tokens[row], padded(list(free.tokens[row, :length])))
    tokens, score = reference_greedy(name, row, eos)
    np.testing.assert_array_equal(out.tokens[row], padded(tokens))
    np.testing.assert_allclose(out.scores[row], score, rtol=1e-5)
  assert out.lengths[0] <= 3


@pytest.mark.parametrize("name,rows,alpha", [
    ("llama", (0, 1), 0.8), ("t5", (0, 1), 0.8),
    # EOS is the greedy first token, so a hypothesis finishes at once; with a strong length
    # penalty a longer one wins, which only a search that does not stop too early finds.
    ("llama", (1,), 2.0)], ids=["llama", "t5", "llama_no_early_stop"])
def test_beam_search_matches_reference(name, rows, alpha):
  """Batched beam search with EOS and a length penalty equals a per-row Python beam search."""
  eos = greedy_eos(name) if len(rows) > 1 else int(run(name, strategy="greedy").tokens[1, 0])
  out = run(name, rows=rows, strategy="beam", num_beams=3, length_penalty=alpha, eos_id=eos)
  for i, row in enumerate(rows):
    tokens, score = reference_beam(name, row, width=3, eos=eos, alpha=alpha)
    np.testing.assert_array_equal(out.tokens[i], padded(tokens))
    assert out.lengths[i] == len(tokens)
    np.testing.assert_allclose(out.scores[i], score, rtol=1e-5)
  if len(rows) > 1:  # EOS did end the best hypothesis somewhere, so finishing is tested
    assert (out.lengths < N).any()
  else:  # the one-token hypothesis that finished at once lost to a longer one
    assert out.lengths[0] > 1


def test_one_beam_without_length_penalty_is_greedy():
  """num_beams=1, length_penalty=0 is greedy search, even when EOS is the runner-up token."""
  # EOS = row 1's second most likely first token: a beam search that let runner-up EOS
  # candidates finish would return that one-token hypothesis instead of the greedy path.
  eos = int(np.argsort(-next_logprobs("gpt2", 1, [()])[0])[1])
  beam = run("gpt2", strategy="beam", num_beams=1, length_penalty=0.0, eos_id=eos)
  for row in (0, 1):
    tokens, score = reference_greedy("gpt2", row, eos)
    np.testing.assert_array_equal(beam.tokens[row], padded(tokens))
    assert beam.lengths[row] == len(tokens)
    np.testing.assert_allclose(beam.scores[row], score, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(top_k=1), dict(top_p=1e-6)],
                         ids=["top_k=1", "top_p=1e-6"])
def test_degenerate_sampling_is_greedy(options):
  """Sampling restricted to one token (top-k 1, or a tiny nucleus) is greedy."""
  sampled = run("gpt2", strategy="sample", temperature=1.5, rng_seed=3, **options)
  greedy = run("gpt2", strategy="greedy")
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  np.testing.assert_allclose(sampled.scores, greedy.scores, rtol=1e-5)


def test_sampling_stays_in_top_k_and_nucleus():
  """Every sampled token lies in the top-k and top-p sets of the reference distribution."""
  options = dict(strategy="sample", temperature=2.0, top_k=6, top_p=0.8)
  out = run("gpt2", rng_seed=0, **options)
  assert not np.array_equal(out.tokens, run("gpt2", rng_seed=1, **options).tokens)
  assert not np.array_equal(out.tokens, run("gpt2", strategy="greedy").tokens)
  for row in (0, 1):
    score = 0.0
    for i in range(N):
      logp = next_logprobs("gpt2", row, [tuple(out.tokens[row, :i])])[0]
      z = logp / 2.0
      order = np.argsort(-z)[:6]
      p = np.exp(z[order] - z[order].max())
      p /= p.sum()
      allowed = order[np.cumsum(p) - p < 0.8]
      assert out.tokens[row, i] in allowed, (row, i)
      score += logp[out.tokens[row, i]]
    np.testing.assert_allclose(out.scores[row], score, rtol=1e-5)


def test_scan_layers_matches_loop():
  """A scanned stack (cache stacked on the layer axis, through lax.scan) decodes as the loop."""
  scan, loop = run("llama_scan", strategy="greedy"), run("llama", strategy="greedy")
  np.testing.assert_array_equal(scan.tokens, loop.tokens)
  np.testing.assert_allclose(scan.scores, loop.scores, rtol=1e-5)


def test_compiles_once_per_shape_config_and_mesh():
  """A second call (same shapes and config) reuses the compiled search, also for another model
  of the same config; an active mesh is part of the key, and the model's constraints work."""
  cfg = decoding.DecodeConfig(max_new_tokens=N, eos_id=-1)
  plain = run("gpt2", strategy="greedy")  # compiled without a mesh (here or by another test)
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
  before = decoding.trace_count()
  with sharding.active_mesh(mesh):
    first = decoding.generate(model("gpt2"), IDS, MASK, cfg)
    assert decoding.trace_count() == before + 1  # the counter does count traces
    again = decoding.generate(model("gpt2"), jax.numpy.asarray(IDS), MASK, cfg)
    other = decoding.generate(build_model(ModelConfig(**GPT2), 1), IDS, MASK, cfg)
  decoding.generate(model("gpt2"), IDS, MASK, cfg)
  assert decoding.trace_count() == before + 1
  np.testing.assert_array_equal(np.asarray(first.tokens), plain.tokens)
  np.testing.assert_array_equal(np.asarray(again.tokens), plain.tokens)
  assert not np.array_equal(np.asarray(other.tokens), plain.tokens)


def test_learned_positions_too_long_fails_before_compiling():
  """Prompt + new tokens beyond a learned position table is a one-line ValueError."""
  before = decoding.trace_count()
  with pytest.raises(ValueError, match="max_len=16"):
    decoding.generate(model("gpt2"), IDS, MASK, decoding.DecodeConfig(max_new_tokens=11))
  with pytest.raises(ValueError, match="needs an rng"):
    decoding.generate(model("gpt2"), IDS, MASK,
                      decoding.DecodeConfig(max_new_tokens=N, strategy="sample"))
  assert decoding.trace_count() == before
