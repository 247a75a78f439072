"""Hugging Face T5 (1.0 and v1.1) <-> our encoder-decoder: relative buckets, RMSNorm, no biases."""

from __future__ import annotations

from typing import Any

from lm_research.interop import family as f
from lm_research.models.config import ModelConfig

ARCHS = {"T5Model": "none", "T5ForConditionalGeneration": "lm"}
_GATED = {"gelu_tanh": "gated-gelu", "gelu": "gated-gelu_python", "relu": "gated-relu",
          "silu": "gated-silu"}


def lm_head(hf: dict[str, Any], tensors: dict) -> str:
  """'tied' (shared embedding, output scaled), 'scaled' (own weights, scaled) or 'plain'.

  T5 1.0 ties and rescales by d_model**-0.5; v1.1 checkpoints have tie_word_embeddings=false and
  an own lm_head. transformers 5 always ties and keeps the choice in scale_decoder_outputs.
  """
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  lm = tensors.get("lm_head.weight")
  if not scale:
    return "plain"
  return "tied" if lm is None or f.same(lm, tensors.get("shared.weight")) else "scaled"


def config_from_hf(hf: dict[str, Any], tensors: dict, head: str) -> ModelConfig:
  """Our encoder-decoder ModelConfig for a T5 config.json."""
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  f.reject(len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"),
           f"feed_forward_proj={proj!r} is not supported; use 'relu', 'gated-gelu' or 'gated-ACT'.")
  # HF special-cases 'gated-gelu' (T5 v1.1) to the tanh approximation.
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  return ModelConfig(
      family="encoder_decoder", vocab_size=hf["vocab_size"], head=head,
      initializer_range=hf.get("initializer_range", 0.02), d_model=hf["d_model"],
      num_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
      rel_buckets=hf.get("relative_attention_num_buckets", 32),
      rel_max_distance=hf.get("relative_attention_max_distance", 128), position="relative",
      norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
      attention_scale=1.0, activation=f.activation(act, "feed_forward_proj"),
      gated_mlp=len(parts) == 2, tie_embeddings=lm_head(hf, tensors) == "tied",
      dropout_rate=hf.get("dropout_rate", 0.1))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """T5's config.json for ``cfg``, or a one-line error naming what T5 cannot hold."""
  f.check_savable("t5", f.common_problems(cfg) + [
      (cfg.norm != "rmsnorm", f"norm={cfg.norm!r}"), (not cfg.pre_norm, "pre_norm=False"),
      (cfg.position != "relative", f"position={cfg.position!r}"),
      (cfg.use_bias, "use_bias=True"),
      (cfg.attention_scale != 1.0, f"attention_scale={cfg.attention_scale}"),
      (cfg.type_vocab_size > 0, f"type_vocab_size={cfg.type_vocab_size}"),
      (cfg.head not in ARCHS.values(), f"head={cfg.head!r}")])
  hf = f.base_hf_config("t5", ARCHS, cfg)
  hf.update(d_model=cfg.d_model, d_kv=cfg.dim_per_head, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
            num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
            relative_attention_num_buckets=cfg.rel_buckets,
            relative_attention_max_distance=cfg.rel_max_distance,
            layer_norm_epsilon=cfg.norm_eps,
            feed_forward_proj=(_GATED if cfg.gated_mlp else f.ACT_TO_HF)[cfg.activation],
            # transformers 4 reads the tie from tie_word_embeddings, 5 from scale_decoder_outputs.
            tie_word_embeddings=cfg.tie_embeddings, scale_decoder_outputs=cfg.tie_embeddings,
            dropout_rate=cfg.dropout_rate, is_encoder_decoder=True, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0)
  return hf


def entries(cfg: ModelConfig, rescaled_lm_head: bool = False) -> list[f.Entry]:
  """Every parameter of ``cfg``'s encoder-decoder, with its T5 tensor."""
  out = [f.Entry(("embeddings", "token", "embedding"), ("shared.weight",))]
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    out.append(f.Entry((stack, "relative_bias", "embedding"),
                       (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)))
    for i in range(n):
      p, h = (stack, "layers", "blocks", i), f"{stack}.block.{i}.layer."
      sublayers = [("attn", "attn_norm", "0.SelfAttention")]
      if stack == "decoder":
        sublayers.append(("cross_attn", "cross_norm", "1.EncDecAttention"))
      for ours, norm, theirs in sublayers:
        for w, hw in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
          out += f.linear(p + (ours, w), f"{h}{theirs}.{hw}", bias=False)
        out += f.norm(p + (norm,), f"{h}{theirs[0]}.layer_norm", bias=False)
      m = f"{h}{len(sublayers)}.DenseReluDense."
      if cfg.gated_mlp:
        out += f.linear(p + ("mlp", "gate"), m + "wi_0", bias=False)
        out += f.linear(p + ("mlp", "wi"), m + "wi_1", bias=False)
      else:
        out += f.linear(p + ("mlp", "wi"), m + "wi", bias=False)
      out += f.linear(p + ("mlp", "wo"), m + "wo", bias=False)
      out += f.norm(p + ("mlp_norm",), f"{h}{len(sublayers)}.layer_norm", bias=False)
    out += f.norm((stack, "final_norm"), f"{stack}.final_layer_norm", bias=False)
  if not cfg.tie_embeddings:
    out.append(f.Entry(("lm_head", "kernel"), ("lm_head.weight", "shared.weight"),
                       transpose=True, rescale=rescaled_lm_head))
  return out


def save_fixups(tensors: dict, cfg: ModelConfig, arch: str) -> dict:
  """T5Model has no LM head."""
  del cfg
  if arch == "T5Model":
    tensors.pop("lm_head.weight", None)
  return tensors


FAMILY = f.HFFamily(
    model_type="t5", family="encoder_decoder", archs=ARCHS, prefix="", roots=(),
    looks_like=lambda hf: "d_kv" in hf, config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, entries=entries, head_from_weights=lambda tensors: "lm",
    tied_aliases={"encoder.embed_tokens.weight": "shared.weight",
                  "decoder.embed_tokens.weight": "shared.weight"},
    lm_tie_source="shared.weight",
    rescaled_lm_head=lambda hf, tensors: lm_head(hf, tensors) == "scaled",
    save_fixups=save_fixups)
