"""Per-family translation between Hugging Face BERT / GPT-2 / T5 and our ModelConfig and weights.

Weights are described by entries ``(our_path, hf_key, kind)``: ``our_path`` is a parameter in the
loop layout (``layout.get_params``), ``hf_key`` the checkpoint tensor (a tuple means "the first of
these that exists"; saving writes the first), and ``kind`` how the tensor becomes ours:
  '='  as is;  'T' transposed (a torch Linear weight is (out, in), our kernels are (in, out));
  'q' / 'k' / 'v'  that third of GPT-2's fused c_attn (a Conv1D, already (in, out)), last axis;
  'Ts' transposed and times d_model**-0.5 (a T5 LM head that HF rescales but does not tie);
  '0'  no tensor in HF: zeros (GPT-2's classification score has no bias).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lm_research.models.config import ModelConfig

# HF activation names -> ours; gelu_fast and gelu_pytorch_tanh are gelu_new's tanh formula.
ACT_FROM_HF = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

ARCHS = {
    "bert": {"BertModel": "none", "BertForPreTraining": "pretraining", "BertForMaskedLM": "lm",
             "BertForSequenceClassification": "sequence_classification",
             "BertForTokenClassification": "token_classification"},
    "gpt2": {"GPT2Model": "none", "GPT2LMHeadModel": "lm",
             "GPT2ForSequenceClassification": "sequence_classification",
             "GPT2ForTokenClassification": "token_classification"},
    "t5": {"T5Model": "none", "T5ForConditionalGeneration": "lm"},
}
FAMILY = {"bert": "encoder", "gpt2": "decoder", "t5": "encoder_decoder"}
MODEL_TYPE = {family: model_type for model_type, family in FAMILY.items()}
# Base-model prefix that HF adds under a head class and omits when the base model is saved alone.
PREFIX = {"bert": ("bert.", ("embeddings", "encoder", "pooler")),
          "gpt2": ("transformer.", ("wte", "wpe", "h", "ln_f")), "t5": ("", ())}
HEAD_PARAMS = ("mlm", "nsp", "classifier", "pooler", "lm_head")  # may start fresh; the body may not


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
  """Whether two stored tensors are one tied weight (allowing copies saved in other precisions)."""
  if a is None or b is None or a.shape != b.shape:
    return False
  return bool(np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2,
                          atol=1e-3))


def model_type_of(hf: dict[str, Any]) -> str | None:
  """config.json's model_type, or a guess from its keys (some old BERT uploads omit it)."""
  if hf.get("model_type"):
    return hf["model_type"]
  if "n_embd" in hf:
    return "gpt2"
  if "d_kv" in hf:
    return "t5"
  if "hidden_size" in hf and "type_vocab_size" in hf:
    return "bert"
  return None


def activation(name: str, where: str) -> str:
  """Our activation name for an HF one, or a one-line error."""
  if name not in ACT_FROM_HF:
    raise ValueError(f"config.json {where}={name!r} is not supported; use one of "
                     f"{', '.join(sorted(ACT_FROM_HF))}.")
  return ACT_FROM_HF[name]


def normalise(model_type: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Checkpoint keys in one canonical spelling: old TF names, with the base-model prefix."""
  prefix, roots = PREFIX[model_type]
  out = {}
  for key, value in tensors.items():
    # TF-converted BERT checkpoints (e.g. bert-base-uncased) call LayerNorm params gamma/beta.
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    if key.split(".")[0] in roots:
      key = prefix + key
    out[key] = value
  if model_type == "bert" and "cls.predictions.bias" not in out and (
      "cls.predictions.decoder.bias" in out):
    out["cls.predictions.bias"] = out.pop("cls.predictions.decoder.bias")
  return out


def tied_aliases(model_type: str) -> dict[str, str]:
  """Keys that some checkpoints store as copies of another tensor (the tie), never used alone."""
  if model_type == "bert":
    return {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
  if model_type == "t5":
    return {"encoder.embed_tokens.weight": "shared.weight",
            "decoder.embed_tokens.weight": "shared.weight"}
  return {}


def infer_head(model_type: str, hf: dict[str, Any], tensors: dict) -> str:
  """The head named by architectures[0], or guessed from the weights when it is absent."""
  archs = hf.get("architectures") or []
  if archs:
    if archs[0] not in ARCHS[model_type]:
      raise ValueError(
          f"config.json architectures[0]={archs[0]!r} is not supported; supported: "
          f"{', '.join(ARCHS[model_type])}. Pass head='none' to load just the base model.")
    return ARCHS[model_type][archs[0]]
  if model_type == "t5":
    return "lm"
  if "cls.seq_relationship.weight" in tensors:
    return "pretraining"
  if "cls.predictions.transform.dense.weight" in tensors or "lm_head.weight" in tensors:
    return "lm"
  if "score.weight" in tensors:
    return "sequence_classification"
  if "classifier.weight" in tensors:
    pooled = "bert.pooler.dense.weight" in tensors
    return "sequence_classification" if pooled else "token_classification"
  return "lm" if model_type == "gpt2" else "none"


def _num_labels(hf: dict[str, Any]) -> int:
  return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def config_from_hf(model_type: str, hf: dict[str, Any], tensors: dict, head: str) -> ModelConfig:
  """Our ModelConfig for an HF config.json dict (plus the weights, for ties and the pooler)."""
  def reject(cond, text):
    if cond:
      raise ValueError(f"config.json {text}")
  common = dict(vocab_size=hf["vocab_size"], head=head,
                initializer_range=hf.get("initializer_range", 0.02))
  if model_type == "bert":
    reject(hf.get("position_embedding_type", "absolute") != "absolute",
           f"position_embedding_type={hf.get('position_embedding_type')!r} is not supported; "
           "only 'absolute' BERT position embeddings load.")
    reject(hf.get("is_decoder", False), "is_decoder=true (a causal BERT) is not supported; "
           "use a bidirectional BERT checkpoint.")
    pooler = "bert.pooler.dense.weight" in tensors or head in (
        "pretraining", "sequence_classification")
    return ModelConfig(
        family="encoder", d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12), pre_norm=False,
        activation=activation(hf.get("hidden_act", "gelu"), "hidden_act"), pooler=pooler,
        num_labels=_num_labels(hf), dropout_rate=hf.get("hidden_dropout_prob", 0.1), **common)
  if model_type == "gpt2":
    reject(hf.get("scale_attn_by_inverse_layer_idx", False),
           "scale_attn_by_inverse_layer_idx=true is not supported; only standard GPT-2 loads.")
    # reorder_and_upcast_attn only changes precision (float32 scores), which we compute anyway.
    d = hf["n_embd"]
    lm = tensors.get("lm_head.weight")
    tie = hf.get("tie_word_embeddings", True) and (
        lm is None or same(lm, tensors.get("transformer.wte.weight")))
    return ModelConfig(
        family="decoder", d_model=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, max_len=hf.get("n_positions", hf.get("n_ctx", 1024)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation(hf.get("activation_function", "gelu_new"), "activation_function"),
        attention_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=bool(tie), num_labels=_num_labels(hf),
        dropout_rate=hf.get("resid_pdrop", 0.1), **common)
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  reject(len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"),
         f"feed_forward_proj={proj!r} is not supported; use 'relu', 'gated-gelu' or 'gated-ACT'.")
  # HF special-cases 'gated-gelu' (T5 v1.1) to the tanh approximation.
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  return ModelConfig(
      family="encoder_decoder", d_model=hf["d_model"], num_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
      rel_buckets=hf.get("relative_attention_num_buckets", 32),
      rel_max_distance=hf.get("relative_attention_max_distance", 128), position="relative",
      norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
      attention_scale=1.0, activation=activation(act, "feed_forward_proj"),
      gated_mlp=len(parts) == 2, tie_embeddings=t5_lm_head(hf, tensors) == "tied",
      dropout_rate=hf.get("dropout_rate", 0.1), **common)


def t5_lm_head(hf: dict[str, Any], tensors: dict) -> str:
  """'tied' (shared embedding, output scaled), 'scaled' (own weights, scaled) or 'plain'.

  T5 1.0 ties and rescales by d_model**-0.5; v1.1 checkpoints have tie_word_embeddings=false and
  an own lm_head. transformers 5 always ties and keeps the choice in scale_decoder_outputs.
  """
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  lm = tensors.get("lm_head.weight")
  if not scale:
    return "plain"
  return "tied" if lm is None or same(lm, tensors.get("shared.weight")) else "scaled"


def _linear(path, key, bias=True, kind="T"):
  out = [(path + ("kernel",), key + ".weight", kind)]
  return out + [(path + ("bias",), key + ".bias", "=")] if bias else out


def _norm(path, key, bias=True):
  out = [(path + ("scale",), key + ".weight", "=")]
  return out + [(path + ("bias",), key + ".bias", "=")] if bias else out


def entries(model_type: str, cfg: ModelConfig, lm_kind: str = "T") -> list[tuple]:
  """(our_path, hf_key, kind) for every parameter of ``cfg``'s model."""
  head, out = cfg.head, []
  if model_type == "bert":
    b = "bert."
    out += [(("embeddings", "token", "embedding"), b + "embeddings.word_embeddings.weight", "="),
            (("embeddings", "position", "embedding"),
             b + "embeddings.position_embeddings.weight", "=")]
    if cfg.type_vocab_size:
      out.append((("embeddings", "token_type", "embedding"),
                  b + "embeddings.token_type_embeddings.weight", "="))
    out += _norm(("embeddings", "norm"), b + "embeddings.LayerNorm")
    for i in range(cfg.num_layers):
      p, h = ("stack", "layers", "blocks", i), f"{b}encoder.layer.{i}."
      for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
        out += _linear(p + ("attn", ours), h + "attention.self." + theirs)
      out += _linear(p + ("attn", "out"), h + "attention.output.dense")
      out += _norm(p + ("attn_norm",), h + "attention.output.LayerNorm")
      out += _linear(p + ("mlp", "wi"), h + "intermediate.dense")
      out += _linear(p + ("mlp", "wo"), h + "output.dense")
      out += _norm(p + ("mlp_norm",), h + "output.LayerNorm")
    if cfg.pooler:
      out += _linear(("pooler", "dense"), b + "pooler.dense")
    if head in ("lm", "pretraining"):
      out += _linear(("mlm", "transform"), "cls.predictions.transform.dense")
      out += _norm(("mlm", "norm"), "cls.predictions.transform.LayerNorm")
      out.append((("mlm", "bias"), "cls.predictions.bias", "="))
    if head == "pretraining":
      out += _linear(("nsp",), "cls.seq_relationship")
    if head in ("sequence_classification", "token_classification"):
      out += _linear(("classifier", "dense"), "classifier")
    return out
  if model_type == "gpt2":
    t = "transformer."
    out += [(("embeddings", "token", "embedding"), t + "wte.weight", "="),
            (("embeddings", "position", "embedding"), t + "wpe.weight", "=")]
    for i in range(cfg.num_layers):
      p, h = ("stack", "layers", "blocks", i), f"{t}h.{i}."
      out += _norm(p + ("attn_norm",), h + "ln_1")
      for ours, third in (("query", "q"), ("key", "k"), ("value", "v")):
        out += [(p + ("attn", ours, "kernel"), h + "attn.c_attn.weight", third),
                (p + ("attn", ours, "bias"), h + "attn.c_attn.bias", third)]
      out += _linear(p + ("attn", "out"), h + "attn.c_proj", kind="=")
      out += _norm(p + ("mlp_norm",), h + "ln_2")
      out += _linear(p + ("mlp", "wi"), h + "mlp.c_fc", kind="=")
      out += _linear(p + ("mlp", "wo"), h + "mlp.c_proj", kind="=")
    out += _norm(("stack", "final_norm"), t + "ln_f")
    if head == "lm" and not cfg.tie_embeddings:
      out += _linear(("lm_head",), "lm_head", bias=False)
    if head == "sequence_classification":
      out += [(("classifier", "dense", "kernel"), "score.weight", "T"),
              (("classifier", "dense", "bias"), None, "0")]
    if head == "token_classification":
      out += _linear(("classifier", "dense"), "classifier")
    return out
  out.append((("embeddings", "token", "embedding"), "shared.weight", "="))
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    out.append(((stack, "relative_bias", "embedding"),
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "="))
    for i in range(n):
      p, h = (stack, "layers", "blocks", i), f"{stack}.block.{i}.layer."
      sublayers = [("attn", "0.SelfAttention")]
      if stack == "decoder":
        sublayers.append(("cross_attn", "1.EncDecAttention"))
      for ours, theirs in sublayers:
        for w, hw in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
          out += _linear(p + (ours, w), f"{h}{theirs}.{hw}", bias=False)
        norm = "cross_norm" if ours == "cross_attn" else "attn_norm"
        out += _norm(p + (norm,), f"{h}{theirs[0]}.layer_norm", bias=False)
      m = f"{h}{len(sublayers)}."
      if cfg.gated_mlp:
        out += _linear(p + ("mlp", "gate"), m + "DenseReluDense.wi_0", bias=False)
        out += _linear(p + ("mlp", "wi"), m + "DenseReluDense.wi_1", bias=False)
      else:
        out += _linear(p + ("mlp", "wi"), m + "DenseReluDense.wi", bias=False)
      out += _linear(p + ("mlp", "wo"), m + "DenseReluDense.wo", bias=False)
      out += _norm(p + ("mlp_norm",), m + "layer_norm", bias=False)
    out += _norm((stack, "final_norm"), f"{stack}.final_layer_norm", bias=False)
  if not cfg.tie_embeddings:
    out.append((("lm_head", "kernel"), ("lm_head.weight", "shared.weight"), lm_kind))
  return out


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
  """(model_type, config.json dict) for ``cfg``; a one-line error if HF cannot represent it."""
  model_type = MODEL_TYPE[cfg.family]
  hd = cfg.dim_per_head
  std_heads = cfg.head_dim in (None, cfg.d_model // cfg.num_heads) and (
      cfg.d_model % cfg.num_heads == 0)
  std_scale = cfg.attention_scale is None or abs(cfg.attention_scale - hd ** -0.5) < 1e-9
  gated_t5 = {"gelu_tanh": "gated-gelu", "gelu": "gated-gelu_python", "relu": "gated-relu",
              "silu": "gated-silu"}
  common = [(cfg.kv_heads != cfg.num_heads, f"num_kv_heads={cfg.num_kv_heads}"),
            (cfg.pooling != "cls", f"pooling={cfg.pooling!r}")]
  if model_type == "t5":
    problems = common + [
        (cfg.norm != "rmsnorm", f"norm={cfg.norm!r}"), (not cfg.pre_norm, "pre_norm=False"),
        (cfg.position != "relative", f"position={cfg.position!r}"),
        (cfg.use_bias, "use_bias=True"), (cfg.attention_scale != 1.0,
                                          f"attention_scale={cfg.attention_scale}"),
        (cfg.type_vocab_size > 0, f"type_vocab_size={cfg.type_vocab_size}")]
  else:
    problems = common + [
        (cfg.norm != "layernorm", f"norm={cfg.norm!r}"), (cfg.gated_mlp, "gated_mlp=True"),
        (cfg.position != "learned", f"position={cfg.position!r}"),
        (not std_heads, f"head_dim={cfg.head_dim}"), (not cfg.use_bias, "use_bias=False")]
  if model_type == "bert":
    problems += [(cfg.pre_norm, "pre_norm=True"), (not std_scale,
                                                   f"attention_scale={cfg.attention_scale}"),
                 (cfg.head in ("pretraining", "sequence_classification") and not cfg.pooler,
                  f"head={cfg.head!r} without a pooler")]
  if model_type == "gpt2":
    problems += [(not cfg.pre_norm, "pre_norm=False"),
                 (not std_scale and cfg.attention_scale != 1.0,
                  f"attention_scale={cfg.attention_scale}"),
                 (cfg.type_vocab_size > 0, f"type_vocab_size={cfg.type_vocab_size}")]
  archs = {head: arch for arch, head in ARCHS[model_type].items()}
  problems.append((cfg.head not in archs, f"head={cfg.head!r}"))
  for bad, what in problems:
    if bad:
      raise ValueError(f"Cannot save as a Hugging Face {model_type} checkpoint: model.{what} has "
                       f"no {model_type} equivalent; save a native checkpoint instead.")
  hf = {"model_type": model_type, "architectures": [archs[cfg.head]],
        "vocab_size": cfg.vocab_size, "initializer_range": cfg.initializer_range}
  if cfg.head in ("sequence_classification", "token_classification"):
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  if model_type == "bert":
    hf.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
              hidden_act=ACT_TO_HF[cfg.activation], max_position_embeddings=cfg.max_len,
              # HF BERT always has a token-type table; one all-zero row adds nothing.
              type_vocab_size=max(1, cfg.type_vocab_size), layer_norm_eps=cfg.norm_eps,
              hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.dropout_rate,
              position_embedding_type="absolute", pad_token_id=0)
  elif model_type == "gpt2":
    hf.update(n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.d_ff,
              n_positions=cfg.max_len, n_ctx=cfg.max_len,
              activation_function=ACT_TO_HF[cfg.activation], layer_norm_epsilon=cfg.norm_eps,
              resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate,
              attn_pdrop=cfg.dropout_rate, scale_attn_weights=std_scale,
              tie_word_embeddings=cfg.tie_embeddings,
              # GPT-2's <|endoftext|> is the last id of its vocabulary.
              bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    if cfg.head == "sequence_classification":
      # HF finds each row's last token by pad_token_id; padding with <|endoftext|> is the norm.
      hf["pad_token_id"] = cfg.vocab_size - 1
  else:
    hf.update(d_model=cfg.d_model, d_kv=hd, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
              num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
              relative_attention_num_buckets=cfg.rel_buckets,
              relative_attention_max_distance=cfg.rel_max_distance,
              layer_norm_epsilon=cfg.norm_eps,
              feed_forward_proj=(gated_t5 if cfg.gated_mlp else ACT_TO_HF)[cfg.activation],
              # transformers 4 reads the tie from tie_word_embeddings, 5 from scale_decoder_outputs.
              tie_word_embeddings=cfg.tie_embeddings, scale_decoder_outputs=cfg.tie_embeddings,
              dropout_rate=cfg.dropout_rate, is_encoder_decoder=True, pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0)
  return model_type, hf
