"""Typed model configuration: the one place where a model's shape and options are defined.

Configs arrive as ml-collections blocks (``config.model``) and are turned into this frozen
dataclass at the model boundary, so a typo or an impossible combination fails here, early,
with one sentence that says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

FAMILIES = ("encoder", "decoder", "encoder_decoder")
HEADS = ("none", "lm", "pretraining", "sequence_classification", "token_classification")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "relative")
REMAT_POLICIES = ("none", "full", "save_dots")
DTYPES = ("float32", "bfloat16", "float16")
# 'auto' settles per backend in ModelConfig.resolved (the README's table says what each gets).
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "flash")
DROPOUT_IMPLS = ("auto", "hash", "jax", "rbg", "unsafe_rbg")
MATMUL_PRECISIONS = ("default", "high", "highest")
BACKENDS = ("cpu", "gpu", "tpu")
# LoRA targets: our projection names, and groups of them (HF: q_proj, k_proj, v_proj, o_proj,
# gate_proj, up_proj = wi, down_proj = wo; BERT's query, key, value, attention.output, ...).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "wi", "wo")
LORA_GROUPS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "wi", "wo"),
               "all": LORA_TARGETS}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Low-rank adapters on chosen projections (``config.train.lora``); rank 0 = none."""

  rank: int = 0
  alpha: float = 16.0  # the update is (alpha / rank) * x A B
  dropout: float = 0.0  # on the adapters' input only
  targets: str = "q,k,v,o"  # comma-separated names of LORA_TARGETS or LORA_GROUPS
  base_dtype: str = ""  # '' keeps the frozen weights in model.param_dtype; 'bfloat16' halves them

  def __post_init__(self):
    if self.rank < 0:
      raise ValueError(f"train.lora.rank must be 0 (off) or positive, got {self.rank}.")
    if self.alpha <= 0:
      raise ValueError(f"train.lora.alpha must be positive, got {self.alpha}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"train.lora.dropout must be in [0, 1), got {self.dropout}.")
    if self.base_dtype not in ("",) + DTYPES:
      raise ValueError(f"train.lora.base_dtype={self.base_dtype!r} is not one of '', "
                       f"{', '.join(DTYPES)}.")
    self.target_names  # noqa: B018  (validates the names now, not at the first layer)

  @property
  def target_names(self) -> frozenset[str]:
    """The projections that get adapters, groups expanded; a bad name raises one line."""
    names = set()
    for name in (n.strip() for n in self.targets.split(",") if n.strip()):
      if name not in LORA_TARGETS and name not in LORA_GROUPS:
        raise ValueError(f"train.lora.targets: {name!r} is not a projection name; use a "
                         f"comma-separated list of {', '.join(LORA_TARGETS + tuple(LORA_GROUPS))}.")
      names.update(LORA_GROUPS.get(name, (name,)))
    if not names and self.rank:
      raise ValueError("train.lora.targets is empty; name the projections to adapt, e.g. "
                       "'q,k,v,o' or 'attention,mlp'.")
    return frozenset(names)

  def adapts(self, name: str | None) -> bool:
    """Whether projection ``name`` gets an adapter."""
    return self.rank > 0 and name in self.target_names


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and options of one Transformer; see configs/*.py for the published presets."""

  family: str  # 'encoder' (BERT), 'decoder' (GPT-2 / LLaMA-style) or 'encoder_decoder' (T5)
  vocab_size: int
  d_model: int
  num_layers: int  # encoder layers for encoder_decoder, else all layers
  num_heads: int
  d_ff: int
  head_dim: int | None = None  # defaults to d_model // num_heads (T5 sets d_kv freely)
  num_kv_heads: int | None = None  # grouped-query attention; defaults to num_heads
  num_decoder_layers: int | None = None  # encoder_decoder only; defaults to num_layers
  max_len: int = 512  # size of the learned position table
  type_vocab_size: int = 0  # BERT token types (segments A/B); 0 = no token-type embedding
  position: str = "learned"  # 'learned' | 'rope' | 'relative' (T5 buckets)
  rope_theta: float = 10000.0
  # Llama 3 RoPE scaling (HF rope_type='llama3'): wavelengths longer than
  # rope_original_max_len / rope_low_freq_factor are stretched by rope_scaling_factor, those
  # shorter than rope_original_max_len / rope_high_freq_factor kept, the rest blended; 1.0 = off
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  rel_buckets: int = 32
  rel_max_distance: int = 128
  norm: str = "layernorm"  # 'layernorm' | 'rmsnorm' (T5 / LLaMA, no mean subtraction)
  norm_eps: float = 1e-5
  pre_norm: bool = True  # False = BERT's post-LN blocks (and LayerNorm after the embeddings)
  activation: str = "gelu"  # 'gelu' (exact erf), 'gelu_tanh', 'relu', 'silu'
  gated_mlp: bool = False  # SwiGLU / gated-GELU: act(x W0) * (x W1)
  use_bias: bool = True
  qkv_bias: bool = False  # biases on the q/k/v projections even when use_bias=False (Qwen2)
  tie_embeddings: bool = True  # LM head = embedding.attend (T5 rescales by d_model**-0.5)
  attention_scale: float | None = None  # None = 1/sqrt(head_dim); T5 uses 1.0
  head: str = "lm"  # which output head: see HEADS
  num_labels: int = 2  # sequence/token classification heads
  pooler: bool = False  # BERT's dense+tanh over [CLS]
  # What a sequence classifier (and BERT's pooler) reads: 'cls' = the first token (encoder) or
  # the last one (decoder), as BERT and GPT-2 do; 'mean' = the average over real tokens
  pooling: str = "cls"
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  # Compute dtype; 'auto' = bfloat16 on GPU/TPU, float32 on CPU. Parameters (param_dtype),
  # norms, softmax statistics, logits and losses stay float32 either way.
  dtype: str = "auto"
  param_dtype: str = "float32"  # storage dtype of parameters (keep f32 master weights)
  remat: str = "none"  # rematerialise each block: 'none' | 'full' | 'save_dots'
  # 'xla' (any device: models/softmax_attention.py), 'cudnn' (cuDNN flash attention through
  # jax.nn.dot_product_attention; NVIDIA GPUs, bf16/fp16), 'splash' / 'flash' (Pallas TPU
  # kernels; interpreted elsewhere, slowly); 'auto' = xla on CPU, cudnn on GPU, splash on TPU
  attention_impl: str = "auto"
  # Dropout bits: 'hash' (models/dropout_mask.py, fused elementwise Threefry), 'jax'
  # (jax.random's partitionable Threefry), 'rbg' / 'unsafe_rbg' (jax.random with XLA's
  # RngBitGenerator, fastest on TPU; per-shard only with
  # XLA_FLAGS=--xla_tpu_spmd_rng_bit_generator_unsafe=1); 'auto' = hash on CPU, jax on GPU/TPU
  dropout_impl: str = "auto"
  # Precision of float32 matmuls: 'default' keeps the backend's (TF32 / bf16 passes on
  # GPU/TPU), 'high' or 'highest' asks for more; bfloat16 matmuls are unaffected
  matmul_precision: str = "default"
  scan_layers: bool = False  # one jax.lax.scan over stacked layers instead of a Python loop
  # Low-rank adapters, from config.train.lora (not a config.model key: a body's architecture
  # never brings them); models/lora.py trains, merges and counts them.
  lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)

  def __post_init__(self):
    _check_choice("family", self.family, FAMILIES)
    _check_choice("head", self.head, HEADS)
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("norm", self.norm, NORMS)
    _check_choice("position", self.position, POSITIONS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    _check_choice("dropout_impl", self.dropout_impl, DROPOUT_IMPLS)
    _check_choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
    if self.attention_impl == "cudnn" and self.dtype == "float32":
      raise ValueError("model.attention_impl='cudnn' needs model.dtype=bfloat16 or float16; "
                       "set one, or use attention_impl='xla'.")
    _check_choice("pooling", self.pooling, ("cls", "mean"))
    _check_choice("dtype", self.dtype, ("auto",) + DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}.")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}; "
          "change one of them or set model.head_dim explicitly.")
    if self.num_heads % self.kv_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads="
          f"{self.kv_heads} for grouped-query attention.")
    if self.position == "relative" and self.family == "decoder":
      raise ValueError("model.position='relative' (T5 buckets) is for encoders and "
                       "encoder_decoder; use 'learned' or 'rope' for a decoder.")
    if self.position == "rope" and self.dim_per_head % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.dim_per_head}.")
    if self.rope_scaling_factor <= 0 or self.rope_original_max_len <= 0:
      raise ValueError("model.rope_scaling_factor and model.rope_original_max_len must be "
                       f"positive, got {self.rope_scaling_factor} and "
                       f"{self.rope_original_max_len}.")
    if self.rope_scaling_factor != 1.0 and (
        not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise ValueError("model.rope_low_freq_factor must be positive and below "
                       f"model.rope_high_freq_factor, got {self.rope_low_freq_factor} and "
                       f"{self.rope_high_freq_factor}.")
    if self.head == "pretraining" and self.family != "encoder":
      raise ValueError("model.head='pretraining' (MLM + NSP) exists for the encoder family only.")
    if self.head in ("sequence_classification", "token_classification") and self.num_labels < 1:
      raise ValueError(f"model.num_labels must be at least 1, got {self.num_labels}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    named = [n.strip() for n in self.lora.targets.split(",")]
    if self.lora.rank and "gate" in named and not self.gated_mlp:
      raise ValueError("train.lora.targets names 'gate', but this model's MLP is not gated; "
                       "drop it (the MLP's projections are wi and wo).")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

  def resolved(self, backend: str | None = None) -> "ModelConfig":
    """A copy with every 'auto' settled for ``backend`` (default: jax.default_backend()).

    The one place that chooses per backend; the models are built from its result.
    """
    backend = backend_kind(backend)
    accelerator = backend != "cpu"
    dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if accelerator else "float32")
    attention = self.attention_impl
    if attention == "auto":
      attention = {"cpu": "xla", "tpu": "splash"}.get(backend, "cudnn")
      if attention == "cudnn" and dtype == "float32":  # cuDNN's flash attention is 16-bit only
        attention = "xla"
    if attention == "cudnn" and backend != "gpu":
      raise ValueError(f"model.attention_impl='cudnn' needs an NVIDIA GPU, but JAX runs on "
                       f"{backend}; use attention_impl='auto'.")
    dropout = self.dropout_impl
    if dropout == "auto":
      dropout = "jax" if accelerator else "hash"
    return self.replace(dtype=dtype, attention_impl=attention, dropout_impl=dropout)

  def replace(self, **changes: Any) -> "ModelConfig":
    """Returns a copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, block: Mapping[str, Any]) -> "ModelConfig":
    """Builds the config from a ``config.model`` block; unknown keys name the nearest valid one."""
    block = dict(block)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in block:
      if key not in valid:
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean model.{near[0]}?" if near else ""
        raise ValueError(f"Unknown model config key model.{key}.{hint}")
    if isinstance(block.get("lora"), Mapping):  # ModelConfig.to_dict's nested form
      block["lora"] = LoRAConfig(**block["lora"])
    return cls(**block)

  def to_dict(self) -> dict[str, Any]:
    """Plain dict of every field, for JSON files and checkpoints."""
    return dataclasses.asdict(self)


def backend_kind(backend: str | None = None) -> str:
  """'gpu', 'tpu', or 'cpu' (any other backend: the portable choices) for a JAX backend name
  (default: the one JAX runs on)."""
  if backend is None:
    import jax  # noqa: PLC0415  (configs import this module without needing a backend)
    backend = jax.default_backend()
  backend = {"cuda": "gpu"}.get(backend, backend)
  return backend if backend in BACKENDS else "cpu"


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r} is not one of {', '.join(choices)}.")
