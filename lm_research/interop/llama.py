"""Hugging Face Llama, Qwen2 and Mistral <-> our LLaMA-style decoder.

The three share one layout: RoPE (half-split), RMSNorm, SwiGLU MLP, grouped-query attention,
an untied or tied LM head. They differ in biases (Qwen2: q/k/v only; Llama: optional
attention_bias / mlp_bias together; Mistral: none) and in sliding-window attention (Mistral,
Qwen2 with use_sliding_window), which we do not implement: a window shorter than
max_position_embeddings fails in one line, a window at least that long never masks anything
and loads as full attention.
"""

from __future__ import annotations

from typing import Any

from lm_research.interop import family as f
from lm_research.models.config import ModelConfig

M = "model."
_ROPE_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def _archs(name: str) -> dict[str, str]:
  return {f"{name}Model": "none", f"{name}ForCausalLM": "lm"}


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
  """Our RoPE fields from config.json: rope_theta + rope_scaling (transformers 4) or
  rope_parameters (transformers 5)."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or params
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  f.reject(scaling.get("partial_rotary_factor", 1.0) != 1.0,
           f"partial_rotary_factor={scaling.get('partial_rotary_factor')} is not supported; "
           "only full rotary embeddings load.")
  if kind == "default":
    return {"rope_theta": float(theta)}
  f.reject(kind != "llama3", f"rope_scaling rope_type={kind!r} is not supported; only "
           "'default' and 'llama3' load.")
  scaling = {**_ROPE_DEFAULTS, **scaling}
  return {"rope_theta": float(theta), "rope_scaling_factor": float(scaling["factor"]),
          "rope_low_freq_factor": float(scaling["low_freq_factor"]),
          "rope_high_freq_factor": float(scaling["high_freq_factor"]),
          "rope_original_max_len": int(scaling["original_max_position_embeddings"])}


def _check_window(hf: dict[str, Any], model_type: str) -> None:
  """Sliding-window attention is not implemented: only a window that never masks may load."""
  window = hf.get("sliding_window")
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    window = None  # Qwen2 stores a window but uses it only with use_sliding_window=true
  max_len = hf.get("max_position_embeddings", 2048)
  f.reject(window is not None and window < max_len,
           f"sliding_window={window} is below max_position_embeddings={max_len}; sliding-window "
           "attention is not supported. Set sliding_window to null in config.json to load it "
           "with full attention (identical for sequences of at most that many tokens).")
  if model_type == "qwen2" and window is None:
    kinds = set(hf.get("layer_types") or ["full_attention"])
    f.reject(kinds != {"full_attention"},
             f"layer_types={sorted(kinds)} is not supported; only full_attention layers load.")


def _biases(hf: dict[str, Any], model_type: str) -> dict[str, bool]:
  """use_bias / qkv_bias of each model type (Llama: attention_bias and mlp_bias must agree)."""
  if model_type == "qwen2":
    return {"use_bias": False, "qkv_bias": True}
  if model_type == "mistral":
    return {"use_bias": False, "qkv_bias": False}
  attn, mlp = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
  f.reject(attn != mlp, f"attention_bias={str(attn).lower()} with mlp_bias={str(mlp).lower()} "
           "is not supported; only both true or both false load.")
  return {"use_bias": attn, "qkv_bias": False}


def _config_from_hf(model_type: str):
  def config_from_hf(hf: dict[str, Any], tensors: dict, head: str) -> ModelConfig:
    """Our LLaMA-style decoder ModelConfig for a Llama / Qwen2 / Mistral config.json."""
    del tensors
    _check_window(hf, model_type)
    quantized = hf.get("quantization_config")
    f.reject(quantized is not None, "quantization_config ("
             f"{(quantized or {}).get('quant_method', 'unknown')}) is not supported; load the "
             "unquantized float16 / bfloat16 checkpoint.")
    f.reject(hf.get("pretraining_tp", 1) not in (1, None),
             f"pretraining_tp={hf.get('pretraining_tp')} is not supported; only 1 loads.")
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], head=head,
        initializer_range=hf.get("initializer_range", 0.02), d_model=d,
        num_layers=hf["num_hidden_layers"], num_heads=n,
        num_kv_heads=hf.get("num_key_value_heads") or n, head_dim=hf.get("head_dim") or d // n,
        d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
        position="rope", norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=f.activation(hf.get("hidden_act", "silu"), "hidden_act"), gated_mlp=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dropout_rate=0.0,
        **_biases(hf, model_type), **_rope(hf))
  return config_from_hf


def _config_to_hf(model_type: str, archs: dict[str, str]):
  def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for ``cfg``, or a one-line error naming what this model type cannot hold."""
    std_scale = cfg.attention_scale is None or abs(
        cfg.attention_scale - cfg.dim_per_head ** -0.5) < 1e-9
    biases = {"qwen2": [(cfg.use_bias, "use_bias=True"), (not cfg.qkv_bias, "qkv_bias=False")],
              "mistral": [(cfg.use_bias, "use_bias=True"), (cfg.qkv_bias, "qkv_bias=True")],
              "llama": [(cfg.qkv_bias and not cfg.use_bias, "qkv_bias=True")]}[model_type]
    f.check_savable(model_type, biases + [
        (cfg.pooling != "cls", f"pooling={cfg.pooling!r}"),
        (cfg.norm != "rmsnorm", f"norm={cfg.norm!r}"), (not cfg.gated_mlp, "gated_mlp=False"),
        (cfg.position != "rope", f"position={cfg.position!r}"),
        (not cfg.pre_norm, "pre_norm=False"),
        (not std_scale, f"attention_scale={cfg.attention_scale}"),
        (cfg.type_vocab_size > 0, f"type_vocab_size={cfg.type_vocab_size}"),
        (cfg.dropout_rate > 0, f"dropout_rate={cfg.dropout_rate}"),
        (cfg.head not in archs.values(), f"head={cfg.head!r}")])
    hf = f.base_hf_config(model_type, archs, cfg)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling_factor != 1.0:
      rope.update(rope_type="llama3", factor=cfg.rope_scaling_factor,
                  low_freq_factor=cfg.rope_low_freq_factor,
                  high_freq_factor=cfg.rope_high_freq_factor,
                  original_max_position_embeddings=cfg.rope_original_max_len)
    hf.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
              head_dim=cfg.dim_per_head, intermediate_size=cfg.d_ff,
              max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
              hidden_act=f.ACT_TO_HF[cfg.activation], tie_word_embeddings=cfg.tie_embeddings,
              # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling.
              rope_parameters=rope, rope_theta=cfg.rope_theta,
              rope_scaling=None if rope["rope_type"] == "default" else rope,
              attention_dropout=0.0)
    if model_type == "llama":
      hf.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
    else:
      hf.update(sliding_window=None, use_sliding_window=False)
    return hf
  return config_to_hf


def entries(cfg: ModelConfig, rescaled_lm_head: bool = False) -> list[f.Entry]:
  """Every parameter of ``cfg``'s decoder and LM head, with its Llama-layout tensor."""
  del rescaled_lm_head
  qkv_bias = cfg.use_bias or cfg.qkv_bias
  out = [f.Entry(("embeddings", "token", "embedding"), (M + "embed_tokens.weight",))]
  for i in range(cfg.num_layers):
    p, h = ("stack", "layers", "blocks", i), f"{M}layers.{i}."
    out += f.norm(p + ("attn_norm",), h + "input_layernorm", bias=False)
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      out += f.linear(p + ("attn", ours), h + "self_attn." + theirs, bias=qkv_bias)
    out += f.linear(p + ("attn", "out"), h + "self_attn.o_proj", bias=cfg.use_bias)
    out += f.norm(p + ("mlp_norm",), h + "post_attention_layernorm", bias=False)
    for ours, theirs in (("gate", "gate_proj"), ("wi", "up_proj"), ("wo", "down_proj")):
      out += f.linear(p + ("mlp", ours), h + "mlp." + theirs, bias=cfg.use_bias)
  out += f.norm(("stack", "final_norm"), M + "norm", bias=False)
  if cfg.head == "lm" and not cfg.tie_embeddings:
    out += f.linear(("lm_head",), "lm_head", bias=False)
  return out


def _family(model_type: str, name: str, accepts) -> f.HFFamily:
  archs = _archs(name)
  return f.HFFamily(
      model_type=model_type, family="decoder", archs=archs, prefix=M,
      roots=("embed_tokens", "layers", "norm"), looks_like=lambda hf: False,
      config_from_hf=_config_from_hf(model_type), config_to_hf=_config_to_hf(model_type, archs),
      entries=entries, head_from_weights=lambda tensors: "lm", lm_tie_source=M +
      "embed_tokens.weight", accepts=accepts)


def _llama_style(cfg: ModelConfig) -> bool:
  return cfg.position == "rope"


# hf.save picks Qwen2 for q/k/v-only biases and Llama for every other RoPE decoder; Mistral's
# layout is Llama's, so it is written only when asked for (hf.save(..., model_type='mistral')).
LLAMA = _family("llama", "Llama", lambda cfg: _llama_style(cfg) and not (
    cfg.qkv_bias and not cfg.use_bias))
QWEN2 = _family("qwen2", "Qwen2", lambda cfg: _llama_style(cfg) and cfg.qkv_bias and
                not cfg.use_bias)
MISTRAL = _family("mistral", "Mistral", lambda cfg: False)
