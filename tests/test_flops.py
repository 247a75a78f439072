"""Model FLOPs per example (what MFU divides by), counted by hand for each family."""

import jax
import pytest
from flax import nnx

from lm_research import metrics
from lm_research.models import ModelConfig, build_model


def matmul_params(cfg: ModelConfig, skip=()) -> int:
  """Every kernel of the built model, plus the tied LM head (the embedding table used again)."""
  params = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)))[1]
  total = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if "kernel" in jax.tree_util.keystr(path)
              and not any(s in jax.tree_util.keystr(path) for s in skip))
  return total + cfg.vocab_size * cfg.d_model


FLOPS_BASE = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=16)


def test_decoder_forward_flops_by_hand():
  """2 x matmul params x T plus causal attention, 2 T^2 (N H) per layer; training = 3 x."""
  cfg = ModelConfig(family="decoder", **FLOPS_BASE)
  # Per layer q, k, v, out 4 * 32 * 32 and MLP 2 * 32 * 64; the tied head 32 * 64.
  assert matmul_params(cfg) == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 64 == 18432
  want = 2 * 18432 * 16 + 2 * (2 * 16 * 16 * 32)
  assert metrics.forward_flops_per_example(cfg, 16) == want == 622592
  assert metrics.train_flops_per_example(cfg, 16) == 3 * want


def test_encoder_forward_flops_by_hand():
  """BERT: layers, MLM transform and tied decoder per token, and full attention: twice the
  causal term (the pooler and NSP act on one token per example and are left out)."""
  cfg = ModelConfig(family="encoder", type_vocab_size=2, pre_norm=False, pooler=True,
                    head="pretraining", **FLOPS_BASE)
  assert matmul_params(cfg, skip=("pooler", "nsp")) == 16384 + 32 * 32 + 32 * 64 == 19456
  causal = 2 * (2 * 16 * 16 * 32)
  want = 2 * 19456 * 16 + 2 * causal
  assert metrics.forward_flops_per_example(cfg, 16) == want == 688128
  assert metrics.train_flops_per_example(cfg, 16) == 3 * want
  # MLM logits at 3 masked positions only: the head (transform + tied decoder) runs 3 times.
  head = 2 * (32 * 32 + 32 * 64)
  assert metrics.forward_flops_per_example(cfg, 16, mlm_positions=3) == want - 13 * head


def test_encoder_decoder_forward_flops_by_hand():
  """T5 (2 encoder, 3 decoder layers, N H = 64 != d_model): encoder over S = 16 tokens, decoder
  self- and cross-attention over T = 6, cross-attention keys and values over the S encoder
  outputs, and the tied head over T."""
  cfg = ModelConfig(family="encoder_decoder", vocab_size=64, d_model=32, num_layers=2,
                    num_decoder_layers=3, num_heads=4, head_dim=16, d_ff=64,
                    position="relative", norm="rmsnorm", activation="relu", use_bias=False)
  s, t, nh = 16, 6, 64
  enc_layer = 4 * 32 * nh + 2 * 32 * 64  # q, k, v, out; MLP
  dec_layer_per_target = 4 * 32 * nh + 2 * 32 * nh + 2 * 32 * 64  # self; cross q, out; MLP
  cross_kv = 2 * 32 * nh  # per decoder layer, applied to each encoder output
  assert matmul_params(cfg) == 2 * enc_layer + 3 * (dec_layer_per_target + cross_kv) + 32 * 64
  encoder = 2 * 2 * enc_layer * s + 2 * 4 * s * s * nh
  decoder = (2 * (3 * dec_layer_per_target + 32 * 64) * t + 2 * 3 * cross_kv * s
             + 3 * (2 * t * t * nh + 4 * t * s * nh))
  want = encoder + decoder
  assert want == 2012672
  assert metrics.forward_flops_per_example(cfg, s, t) == want
  assert metrics.train_flops_per_example(cfg, s, t) == 3 * want


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


@pytest.mark.parametrize("kind,dtype,precision,want", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", "default", 989e12),
    ("NVIDIA H100 80GB HBM3", "float16", "highest", 989e12),  # precision is for float32 only
    ("NVIDIA H200", "float32", "default", 494.5e12),  # TF32 tensor cores
    ("NVIDIA A100-SXM4-40GB", "float32", "highest", 19.5e12),  # plain FP32 units
    ("TPU v4", "float32", "default", 275e12),  # one bfloat16 pass
    ("TPU v5 lite", "float32", "highest", 197e12 / 6),  # six bfloat16 passes
    ("cpu", "float32", "default", None),
])
def test_peak_is_the_dtype_in_use(kind, dtype, precision, want):
  """MFU divides by the spec-sheet peak of the dtype (and float32 precision) a run computes in."""
  assert metrics.table_peak_flops(_Device(kind), dtype, precision) == want
