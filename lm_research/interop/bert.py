"""Hugging Face BERT <-> our encoder: post-LN, learned positions, token types, pooler."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lm_research.interop import family as f
from lm_research.models.config import ModelConfig

ARCHS = {"BertModel": "none", "BertForPreTraining": "pretraining", "BertForMaskedLM": "lm",
         "BertForSequenceClassification": "sequence_classification",
         "BertForTokenClassification": "token_classification"}
B = "bert."


def config_from_hf(hf: dict[str, Any], tensors: dict, head: str) -> ModelConfig:
  """Our encoder ModelConfig for a BERT config.json (the weights tell whether a pooler exists)."""
  f.reject(hf.get("position_embedding_type", "absolute") != "absolute",
           f"position_embedding_type={hf.get('position_embedding_type')!r} is not supported; "
           "only 'absolute' BERT position embeddings load.")
  f.reject(hf.get("is_decoder", False), "is_decoder=true (a causal BERT) is not supported; "
           "use a bidirectional BERT checkpoint.")
  pooler = B + "pooler.dense.weight" in tensors or head in ("pretraining",
                                                           "sequence_classification")
  return ModelConfig(
      family="encoder", vocab_size=hf["vocab_size"], head=head,
      initializer_range=hf.get("initializer_range", 0.02), d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2), norm_eps=hf.get("layer_norm_eps", 1e-12),
      pre_norm=False, activation=f.activation(hf.get("hidden_act", "gelu"), "hidden_act"),
      pooler=pooler, num_labels=f.num_labels(hf), dropout_rate=hf.get("hidden_dropout_prob", 0.1))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """BERT's config.json for ``cfg``, or a one-line error naming what BERT cannot hold."""
  std_scale = (cfg.attention_scale is None
               or abs(cfg.attention_scale - cfg.dim_per_head ** -0.5) < 1e-9)
  f.check_savable("bert", f.common_problems(cfg) + [
      (cfg.norm != "layernorm", f"norm={cfg.norm!r}"), (cfg.gated_mlp, "gated_mlp=True"),
      (cfg.position != "learned", f"position={cfg.position!r}"),
      (cfg.head_dim not in (None, cfg.d_model // cfg.num_heads) or cfg.d_model % cfg.num_heads,
       f"head_dim={cfg.head_dim}"), (not cfg.use_bias, "use_bias=False"),
      (cfg.pre_norm, "pre_norm=True"), (not std_scale, f"attention_scale={cfg.attention_scale}"),
      (cfg.head in ("pretraining", "sequence_classification") and not cfg.pooler,
       f"head={cfg.head!r} without a pooler"),
      (cfg.head not in ARCHS.values(), f"head={cfg.head!r}")])
  hf = f.base_hf_config("bert", ARCHS, cfg)
  hf.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
            hidden_act=f.ACT_TO_HF[cfg.activation], max_position_embeddings=cfg.max_len,
            # HF BERT always has a token-type table; one all-zero row adds nothing.
            type_vocab_size=max(1, cfg.type_vocab_size), layer_norm_eps=cfg.norm_eps,
            hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.dropout_rate,
            position_embedding_type="absolute", pad_token_id=0)
  return hf


def entries(cfg: ModelConfig, rescaled_lm_head: bool = False) -> list[f.Entry]:
  """Every parameter of ``cfg``'s encoder and head, with its BERT tensor."""
  del rescaled_lm_head  # BERT's MLM decoder is always the tied embedding
  out = [f.Entry(("embeddings", "token", "embedding"), (B + "embeddings.word_embeddings.weight",)),
         f.Entry(("embeddings", "position", "embedding"),
                 (B + "embeddings.position_embeddings.weight",))]
  if cfg.type_vocab_size:
    out.append(f.Entry(("embeddings", "token_type", "embedding"),
                       (B + "embeddings.token_type_embeddings.weight",)))
  out += f.norm(("embeddings", "norm"), B + "embeddings.LayerNorm")
  for i in range(cfg.num_layers):
    p, h = ("stack", "layers", "blocks", i), f"{B}encoder.layer.{i}."
    for name in ("query", "key", "value"):
      out += f.linear(p + ("attn", name), h + "attention.self." + name)
    out += f.linear(p + ("attn", "out"), h + "attention.output.dense")
    out += f.norm(p + ("attn_norm",), h + "attention.output.LayerNorm")
    out += f.linear(p + ("mlp", "wi"), h + "intermediate.dense")
    out += f.linear(p + ("mlp", "wo"), h + "output.dense")
    out += f.norm(p + ("mlp_norm",), h + "output.LayerNorm")
  if cfg.pooler:
    out += f.linear(("pooler", "dense"), B + "pooler.dense")
  if cfg.head in ("lm", "pretraining"):
    out += f.linear(("mlm", "transform"), "cls.predictions.transform.dense")
    out += f.norm(("mlm", "norm"), "cls.predictions.transform.LayerNorm")
    out.append(f.Entry(("mlm", "bias"), ("cls.predictions.bias",)))
  if cfg.head == "pretraining":
    out += f.linear(("nsp",), "cls.seq_relationship")
  if cfg.head in ("sequence_classification", "token_classification"):
    out += f.linear(("classifier", "dense"), "classifier")
  return out


def head_from_weights(tensors: dict) -> str:
  """The head a BERT checkpoint without ``architectures`` was saved with."""
  if "cls.seq_relationship.weight" in tensors:
    return "pretraining"
  if "cls.predictions.transform.dense.weight" in tensors:
    return "lm"
  if "classifier.weight" in tensors:
    pooled = B + "pooler.dense.weight" in tensors
    return "sequence_classification" if pooled else "token_classification"
  return "none"


def fix_tensors(tensors: dict) -> dict:
  """Some uploads keep the MLM output bias only as the decoder's bias."""
  if "cls.predictions.bias" not in tensors and "cls.predictions.decoder.bias" in tensors:
    tensors["cls.predictions.bias"] = tensors.pop("cls.predictions.decoder.bias")
  return tensors


def save_fixups(tensors: dict, cfg: ModelConfig, arch: str) -> dict:
  """The token-type table HF always has; no pooler where the HF class has none."""
  del arch
  if not cfg.type_vocab_size:
    tensors[B + "embeddings.token_type_embeddings.weight"] = np.zeros((1, cfg.d_model), np.float32)
  if cfg.head in ("lm", "token_classification"):
    # These HF classes are built without a pooler; extra keys would only warn on load.
    return {k: v for k, v in tensors.items() if not k.startswith(B + "pooler.")}
  if not cfg.pooler:
    warnings.warn("transformers' BertModel always has a pooler; this model has none, so "
                  "transformers will initialise it freshly (hidden states are unaffected).",
                  stacklevel=3)
  return tensors


FAMILY = f.HFFamily(
    model_type="bert", family="encoder", archs=ARCHS, prefix=B,
    roots=("embeddings", "encoder", "pooler"),
    looks_like=lambda hf: "hidden_size" in hf and "type_vocab_size" in hf,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, entries=entries,
    head_from_weights=head_from_weights,
    tied_aliases={"cls.predictions.decoder.weight": B + "embeddings.word_embeddings.weight",
                  "cls.predictions.decoder.bias": "cls.predictions.bias"},
    strict_ties=True, fix_tensors=fix_tensors, save_fixups=save_fixups)
