"""Hugging Face GPT-2 <-> our decoder: pre-LN, learned positions, fused q/k/v Conv1D weights."""

from __future__ import annotations

from typing import Any

from lm_research.interop import family as f
from lm_research.models.config import ModelConfig

ARCHS = {"GPT2Model": "none", "GPT2LMHeadModel": "lm",
         "GPT2ForSequenceClassification": "sequence_classification",
         "GPT2ForTokenClassification": "token_classification"}
T = "transformer."


def config_from_hf(hf: dict[str, Any], tensors: dict, head: str) -> ModelConfig:
  """Our decoder ModelConfig for a GPT-2 config.json (the weights tell whether the head is tied)."""
  f.reject(hf.get("scale_attn_by_inverse_layer_idx", False),
           "scale_attn_by_inverse_layer_idx=true is not supported; only standard GPT-2 loads.")
  # reorder_and_upcast_attn only changes precision (float32 scores), which we compute anyway.
  d = hf["n_embd"]
  lm = tensors.get("lm_head.weight")
  tie = hf.get("tie_word_embeddings", True) and (
      lm is None or f.same(lm, tensors.get(T + "wte.weight")))
  return ModelConfig(
      family="decoder", vocab_size=hf["vocab_size"], head=head,
      initializer_range=hf.get("initializer_range", 0.02), d_model=d, num_layers=hf["n_layer"],
      num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
      max_len=hf.get("n_positions", hf.get("n_ctx", 1024)),
      norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      activation=f.activation(hf.get("activation_function", "gelu_new"), "activation_function"),
      attention_scale=None if hf.get("scale_attn_weights", True) else 1.0,
      tie_embeddings=bool(tie), num_labels=f.num_labels(hf),
      dropout_rate=hf.get("resid_pdrop", 0.1))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """GPT-2's config.json for ``cfg``, or a one-line error naming what GPT-2 cannot hold."""
  std_scale = (cfg.attention_scale is None
               or abs(cfg.attention_scale - cfg.dim_per_head ** -0.5) < 1e-9)
  f.check_savable("gpt2", f.common_problems(cfg) + [
      (cfg.norm != "layernorm", f"norm={cfg.norm!r}"), (cfg.gated_mlp, "gated_mlp=True"),
      (cfg.position != "learned", f"position={cfg.position!r}"),
      (cfg.head_dim not in (None, cfg.d_model // cfg.num_heads) or cfg.d_model % cfg.num_heads,
       f"head_dim={cfg.head_dim}"), (not cfg.use_bias, "use_bias=False"),
      (not cfg.pre_norm, "pre_norm=False"),
      (not std_scale and cfg.attention_scale != 1.0, f"attention_scale={cfg.attention_scale}"),
      (cfg.type_vocab_size > 0, f"type_vocab_size={cfg.type_vocab_size}"),
      (cfg.head not in ARCHS.values(), f"head={cfg.head!r}")])
  hf = f.base_hf_config("gpt2", ARCHS, cfg)
  hf.update(n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.d_ff,
            n_positions=cfg.max_len, n_ctx=cfg.max_len,
            activation_function=f.ACT_TO_HF[cfg.activation], layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate,
            attn_pdrop=cfg.dropout_rate, scale_attn_weights=std_scale,
            tie_word_embeddings=cfg.tie_embeddings,
            # GPT-2's <|endoftext|> is the last id of its vocabulary.
            bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
  if cfg.head == "sequence_classification":
    # HF finds each row's last token by pad_token_id; padding with <|endoftext|> is the norm.
    hf["pad_token_id"] = cfg.vocab_size - 1
  return hf


def entries(cfg: ModelConfig, rescaled_lm_head: bool = False) -> list[f.Entry]:
  """Every parameter of ``cfg``'s decoder and head, with its GPT-2 tensor.

  GPT-2's Conv1D weights are already (in, out), so nothing in the body is transposed.
  """
  del rescaled_lm_head
  out = [f.Entry(("embeddings", "token", "embedding"), (T + "wte.weight",)),
         f.Entry(("embeddings", "position", "embedding"), (T + "wpe.weight",))]
  for i in range(cfg.num_layers):
    p, h = ("stack", "layers", "blocks", i), f"{T}h.{i}."
    out += f.norm(p + ("attn_norm",), h + "ln_1")
    for third, name in enumerate(("query", "key", "value")):
      out += [f.Entry(p + ("attn", name, "kernel"), (h + "attn.c_attn.weight",), fused_third=third),
              f.Entry(p + ("attn", name, "bias"), (h + "attn.c_attn.bias",), fused_third=third)]
    out += f.linear(p + ("attn", "out"), h + "attn.c_proj", transpose=False)
    out += f.norm(p + ("mlp_norm",), h + "ln_2")
    out += f.linear(p + ("mlp", "wi"), h + "mlp.c_fc", transpose=False)
    out += f.linear(p + ("mlp", "wo"), h + "mlp.c_proj", transpose=False)
  out += f.norm(("stack", "final_norm"), T + "ln_f")
  if cfg.head == "lm" and not cfg.tie_embeddings:
    out += f.linear(("lm_head",), "lm_head", bias=False)
  if cfg.head == "sequence_classification":  # HF's score layer has no bias: ours stays zero
    out += [f.Entry(("classifier", "dense", "kernel"), ("score.weight",), transpose=True),
            f.Entry(("classifier", "dense", "bias"), ())]
  if cfg.head == "token_classification":
    out += f.linear(("classifier", "dense"), "classifier")
  return out


def head_from_weights(tensors: dict) -> str:
  """The head a GPT-2 checkpoint without ``architectures`` was saved with."""
  if "score.weight" in tensors:
    return "sequence_classification"
  if "classifier.weight" in tensors:
    return "token_classification"
  return "lm"


FAMILY = f.HFFamily(
    model_type="gpt2", family="decoder", archs=ARCHS, prefix=T, roots=("wte", "wpe", "h", "ln_f"),
    looks_like=lambda hf: "n_embd" in hf, config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, entries=entries, head_from_weights=head_from_weights,
    lm_tie_source=T + "wte.weight")
