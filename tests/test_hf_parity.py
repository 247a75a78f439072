"""hf.load / hf.save against transformers: same logits and hidden states on tiny random models."""

import json
import shutil
import warnings

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import save_file

from lm_research.interop import hf
from lm_research.models import ModelConfig, build_model
from lm_research.models.layout import get_params, set_params

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = pytest.mark.slow

TOL = 1e-4


def _inputs(vocab, seed=0, length=7):
  """Ids with the second row padded (id 0, mask 0) at the end, and two token-type segments."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, vocab, (2, length))
  mask = np.ones((2, length), np.int64)
  mask[1, length - 2:] = 0
  ids[1, length - 2:] = 0
  types = np.zeros((2, length), np.int64)
  types[:, 3:] = 1
  return ids, mask, types


def _check(name, ours, theirs):
  """Asserts max |ours - theirs| <= TOL."""
  theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
  delta = float(np.max(np.abs(np.asarray(ours, np.float32) - theirs)))
  assert delta <= TOL, f"{name}: max |delta| = {delta}"


# One compiled forward per model: far cheaper than eager op-by-op dispatch on fresh shapes.
_apply = nnx.jit(lambda model, kw: model(**kw))


def _hf_model(cls, config, folder):
  """A random-weight transformers model in eval mode, saved to ``folder`` as safetensors."""
  torch.manual_seed(0)
  model = cls(config).eval()
  model.save_pretrained(folder, safe_serialization=True)
  return model


def _t(x):
  return torch.tensor(x)


def _bert_config(**kw):
  base = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
              intermediate_size=80, max_position_embeddings=16, type_vocab_size=2)
  return transformers.BertConfig(**{**base, **kw})


BERT_CASES = {
    "pretraining": (transformers.BertForPreTraining, {}),
    "mlm_gelu_new": (transformers.BertForMaskedLM,
                     dict(vocab_size=97, hidden_size=32, num_attention_heads=4,
                          intermediate_size=72, hidden_act="gelu_new", layer_norm_eps=1e-7)),
    "seq_cls": (transformers.BertForSequenceClassification, dict(num_labels=3, hidden_act="relu")),
    "tok_cls": (transformers.BertForTokenClassification, dict(num_labels=5, type_vocab_size=3)),
    "base": (transformers.BertModel, dict(hidden_act="silu")),
}


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
  """A BertForPreTraining folder shared by the scan, error and warning tests."""
  folder = tmp_path_factory.mktemp("bert_pre")
  model = _hf_model(transformers.BertForPreTraining, _bert_config(), folder)
  return folder, model


def _run_bert(model, vocab):
  ids, mask, types = _inputs(vocab)
  with torch.no_grad():
    out = model(_t(ids), attention_mask=_t(mask), token_type_ids=_t(types),
                output_hidden_states=True)
  return (ids, mask, types), out


@pytest.mark.parametrize("case", sorted(BERT_CASES))
def test_bert_load_parity(case, tmp_path):
  cls, kw = BERT_CASES[case]
  config = _bert_config(**kw)
  theirs = _hf_model(cls, config, tmp_path)
  (ids, mask, types), ref = _run_bert(theirs, config.vocab_size)
  model, cfg = hf.load(tmp_path)
  out = _apply(model, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
  _check(f"bert/{case}/hidden", out.hidden_states, ref.hidden_states[-1])
  assert cfg.pooler == (case in ("pretraining", "seq_cls", "base"))
  if case == "pretraining":
    _check(f"bert/{case}/logits", out.logits, ref.prediction_logits)
    _check(f"bert/{case}/nsp", out.nsp_logits, ref.seq_relationship_logits)
  elif case == "base":
    _check(f"bert/{case}/pooled", out.pooled, ref.pooler_output)
  else:
    _check(f"bert/{case}/logits", out.logits, ref.logits)


def test_bert_tf_style_names(bert_folder, tmp_path):
  """bert-base-uncased style: LayerNorm gamma/beta, a stored tied decoder and position_ids."""
  folder, theirs = bert_folder
  sd = {k: v.clone() for k, v in theirs.state_dict().items()}
  sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                   "LayerNorm.beta"): v
        for k, v in sd.items()}
  sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
  sd["bert.embeddings.position_ids"] = torch.arange(16)[None]
  save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  cfg_json = json.loads((folder / "config.json").read_text())
  cfg_json["architectures"] = ["BertForMaskedLM"]  # as bert-base-uncased says
  (tmp_path / "config.json").write_text(json.dumps(cfg_json))
  with pytest.warns(UserWarning, match="cls.seq_relationship.*position_ids|position_ids"):
    model, cfg = hf.load(tmp_path)
  assert cfg.head == "lm" and cfg.pooler
  (ids, mask, types), ref = _run_bert(theirs, 101)
  out = _apply(model, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
  _check("bert/tf_names/logits", out.logits, ref.prediction_logits)


def test_sharded_bfloat16_and_bare_config(bert_folder, tmp_path):
  """Two shards and an index, one shard in bfloat16, config.json without model_type."""
  folder, theirs = bert_folder
  want = get_params(hf.load(folder)[0])
  sd = theirs.state_dict()
  keys = sorted(sd)
  shards = {"model-00001-of-00002.safetensors": keys[:len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
  for name, names in shards.items():
    dtype = torch.bfloat16 if "00002-of" in name else torch.float32
    save_file({k: sd[k].to(dtype).contiguous() for k in names}, str(tmp_path / name),
              metadata={"format": "pt"})
  index = {"metadata": {}, "weight_map": {k: n for n, names in shards.items() for k in names}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  cfg_json = json.loads((folder / "config.json").read_text())
  del cfg_json["model_type"], cfg_json["architectures"]
  (tmp_path / "config.json").write_text(json.dumps(cfg_json))
  model, cfg = hf.load(tmp_path)
  assert cfg.head == "pretraining" and cfg.family == "encoder"
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-6),
               get_params(model), want)


def test_scan_layers_matches_loop(bert_folder):
  folder, _ = bert_folder
  ids, mask, types = _inputs(101)
  loop, _ = hf.load(folder)
  scan, cfg = hf.load(folder, scan_layers=True)
  assert cfg.scan_layers
  a = _apply(loop, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
  b = _apply(scan, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
  _check("bert/scan_vs_loop", b.logits, np.asarray(a.logits))


def _gpt2_config(**kw):
  base = dict(vocab_size=101, n_embd=48, n_layer=2, n_head=3, n_inner=100, n_positions=16,
              bos_token_id=100, eos_token_id=100, pad_token_id=0)
  return transformers.GPT2Config(**{**base, **kw})


GPT2_CASES = {
    "lm": (transformers.GPT2LMHeadModel, {}),
    "lm_untied_gelu": (transformers.GPT2LMHeadModel,
                       dict(n_embd=32, n_head=4, n_inner=None, activation_function="gelu",
                            layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                            scale_attn_weights=False)),
    "seq_cls": (transformers.GPT2ForSequenceClassification, dict(num_labels=3)),
    "tok_cls": (transformers.GPT2ForTokenClassification, dict(num_labels=4)),
}


@pytest.mark.parametrize("case", sorted(GPT2_CASES))
def test_gpt2_load_parity(case, tmp_path):
  cls, kw = GPT2_CASES[case]
  config = _gpt2_config(**kw)
  theirs = _hf_model(cls, config, tmp_path)
  ids, mask, _ = _inputs(config.vocab_size, seed=1)
  with torch.no_grad():
    ref = theirs(_t(ids), attention_mask=_t(mask), output_hidden_states=True)
  model, cfg = hf.load(tmp_path)
  assert cfg.tie_embeddings == (case != "lm_untied_gelu")
  out = _apply(model, dict(input_ids=ids, attention_mask=mask))
  _check(f"gpt2/{case}/hidden", out.hidden_states, ref.hidden_states[-1])
  _check(f"gpt2/{case}/logits", out.logits, ref.logits)


def _t5_config(**kw):
  base = dict(vocab_size=99, d_model=32, d_kv=12, d_ff=56, num_layers=2, num_decoder_layers=3,
              num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              feed_forward_proj="relu", decoder_start_token_id=0)
  return transformers.T5Config(**{**base, **kw})


T5_CASES = {
    "v1_0_relu_tied": {},
    "v1_1_gated_gelu_untied": dict(d_model=40, d_kv=8, num_heads=4, d_ff=64, num_decoder_layers=1,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def _run_t5(model, vocab):
  ids, mask, _ = _inputs(vocab, seed=2, length=9)
  dec, dec_mask, _ = _inputs(vocab, seed=3, length=6)
  with torch.no_grad():
    ref = model(input_ids=_t(ids), attention_mask=_t(mask), decoder_input_ids=_t(dec),
                decoder_attention_mask=_t(dec_mask), output_hidden_states=True)
  return (ids, mask, dec, dec_mask), ref


def _check_t5(name, model, inputs, ref):
  ids, mask, dec, dec_mask = inputs
  out = _apply(model, dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                            decoder_attention_mask=dec_mask))
  _check(f"{name}/encoder", out.encoder_hidden_states, ref.encoder_last_hidden_state)
  _check(f"{name}/hidden", out.hidden_states, ref.decoder_hidden_states[-1])
  _check(f"{name}/logits", out.logits, ref.logits)


@pytest.mark.parametrize("case", sorted(T5_CASES))
def test_t5_load_parity(case, tmp_path):
  config = _t5_config(**T5_CASES[case])
  theirs = _hf_model(transformers.T5ForConditionalGeneration, config, tmp_path)
  inputs, ref = _run_t5(theirs, config.vocab_size)
  model, cfg = hf.load(tmp_path)
  assert cfg.gated_mlp == ("gated" in case) and cfg.decoder_layers == config.num_decoder_layers
  _check_t5(f"t5/{case}", model, inputs, ref)


def test_t5_own_lm_head(tmp_path):
  """A T5 v1.1 checkpoint as on the hub: tie_word_embeddings=false and its own lm_head.weight."""
  config = _t5_config(**T5_CASES["v1_1_gated_gelu_untied"])
  theirs = _hf_model(transformers.T5ForConditionalGeneration, config, tmp_path)
  sd = {k: v.clone() for k, v in theirs.state_dict().items()}
  sd["lm_head.weight"] = torch.randn(config.vocab_size, config.d_model)
  save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  cfg_json = json.loads((tmp_path / "config.json").read_text())
  cfg_json.pop("scale_decoder_outputs", None)
  (tmp_path / "config.json").write_text(json.dumps({**cfg_json, "tie_word_embeddings": False}))
  reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  inputs, ref = _run_t5(reference, config.vocab_size)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the stored encoder/decoder.embed_tokens copies are ties
    model, cfg = hf.load(tmp_path)
  assert not cfg.tie_embeddings
  _check_t5("t5/own_lm_head", model, inputs, ref)


def _randomise(model, seed=0):
  """Random values everywhere (biases and norm scales too) so a round trip misses nothing."""
  rng = np.random.RandomState(seed)
  set_params(model, jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32),
                                 get_params(model)))
  return model


def _from_pretrained(cls, folder):
  model, info = cls.from_pretrained(folder, output_loading_info=True)
  assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
  return model.eval()


ROUND_TRIPS = {
    "bert_pretraining": (transformers.BertForPreTraining, ModelConfig(
        family="encoder", vocab_size=83, d_model=36, num_layers=2, num_heads=3, d_ff=52,
        max_len=12, type_vocab_size=2, pre_norm=False, pooler=True, head="pretraining",
        activation="gelu_tanh", norm_eps=1e-12)),
    "gpt2_lm": (transformers.GPT2LMHeadModel, ModelConfig(
        family="decoder", vocab_size=83, d_model=36, num_layers=2, num_heads=3, d_ff=60,
        max_len=12)),
    "t5_gated_untied": (transformers.T5ForConditionalGeneration, ModelConfig(
        family="encoder_decoder", vocab_size=83, d_model=24, num_layers=2, num_decoder_layers=1,
        num_heads=2, head_dim=10, d_ff=40, position="relative", rel_buckets=8,
        rel_max_distance=16, norm="rmsnorm", norm_eps=1e-6, use_bias=False, attention_scale=1.0,
        activation="gelu_tanh", gated_mlp=True, tie_embeddings=False)),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_round_trip(case, tmp_path):
  cls, cfg = ROUND_TRIPS[case]
  ours = _randomise(nnx.eval_shape(lambda: build_model(cfg, 0)))
  hf.save(ours, cfg, tmp_path)
  theirs = _from_pretrained(cls, tmp_path)
  if cfg.family == "encoder_decoder":
    inputs, ref = _run_t5(theirs, cfg.vocab_size)
    _check_t5(f"round_trip/{case}", ours, inputs, ref)
    return
  ids, mask, types = _inputs(cfg.vocab_size, seed=4)
  kw = dict(token_type_ids=types) if cfg.family == "encoder" else {}
  with torch.no_grad():
    ref = theirs(_t(ids), attention_mask=_t(mask), output_hidden_states=True,
                 **{k: _t(v) for k, v in kw.items()})
  out = _apply(ours, dict(input_ids=ids, attention_mask=mask, **kw))
  _check(f"round_trip/{case}/hidden", out.hidden_states, ref.hidden_states[-1])
  if cfg.head == "pretraining":
    _check(f"round_trip/{case}/logits", out.logits, ref.prediction_logits)
    _check(f"round_trip/{case}/nsp", out.nsp_logits, ref.seq_relationship_logits)
  else:
    _check(f"round_trip/{case}/logits", out.logits, ref.logits)
  back, back_cfg = hf.load(tmp_path)  # and back into ours, bit for bit
  assert back_cfg.replace(dropout_rate=0.0) == cfg
  jax.tree.map(np.testing.assert_array_equal, get_params(back), get_params(ours))


def test_bert_model_with_new_head_warns_once(tmp_path):
  _hf_model(transformers.BertModel, _bert_config(), tmp_path)
  with pytest.warns(UserWarning) as record:
    model, cfg = hf.load(tmp_path, head="pretraining")
  messages = [str(w.message) for w in record]
  fresh = [m for m in messages if "freshly initialised" in m]
  assert len(fresh) == 1 and len(messages) == 1, messages
  assert "cls.predictions.bias" in fresh[0] and "cls.seq_relationship.weight" in fresh[0]
  assert cfg.head == "pretraining" and model.nsp is not None


def test_unused_weights_warn(bert_folder):
  folder, _ = bert_folder
  with pytest.warns(UserWarning, match=r"ignored .*cls\.predictions"):
    _, cfg = hf.load(folder, head="none")
  assert cfg.head == "none" and cfg.pooler


def _copy(folder, dest):
  shutil.copytree(folder, dest)
  return dest


def _edit_config(folder, **changes):
  path = folder / "config.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_load_errors(bert_folder, tmp_path):
  folder, _ = bert_folder
  with pytest.raises(ValueError, match="no config.json"):
    hf.load(tmp_path)
  bad = _copy(folder, tmp_path / "gemma")
  _edit_config(bad, model_type="gemma")
  with pytest.raises(ValueError, match="model_type='gemma' is not supported"):
    hf.load(bad)
  bad = _copy(folder, tmp_path / "qa")
  _edit_config(bad, architectures=["BertForQuestionAnswering"])
  with pytest.raises(ValueError, match="architectures.*head='none'"):
    hf.load(bad)
  bad = _copy(folder, tmp_path / "shape")
  _edit_config(bad, intermediate_size=64)
  with pytest.raises(ValueError, match="has shape .* config.json implies"):
    hf.load(bad)
  bad = _copy(folder, tmp_path / "pickle")
  (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
  with pytest.raises(ValueError, match="pytorch_model.bin.*convert it to safetensors"):
    hf.load(bad)
  (bad / "pytorch_model.bin").unlink()
  with pytest.raises(ValueError, match=r"no \*.safetensors weights"):
    hf.load(bad)
  _edit_config(bad, model_type="gpt2", architectures=["GPT2Model"],
               scale_attn_by_inverse_layer_idx=True)
  (tmp_path / "pickle" / "model.safetensors").write_bytes((folder / "model.safetensors")
                                                         .read_bytes())
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
    hf.load(bad)


def test_save_rejects_what_hf_cannot_represent(tmp_path):
  # A RoPE decoder saves as Llama (tests/test_hf_llama.py), but not with LayerNorm, nor as GPT-2.
  rope = ModelConfig(family="decoder", vocab_size=50, d_model=16, num_layers=1, num_heads=2,
                     d_ff=32, position="rope", norm="layernorm", gated_mlp=True,
                     activation="silu", tie_embeddings=False, use_bias=False)
  model = nnx.eval_shape(lambda: build_model(rope, 0))
  with pytest.raises(ValueError, match="Cannot save as a Hugging Face llama checkpoint: "
                     "model.norm='layernorm' has no llama equivalent"):
    hf.save(model, rope, tmp_path)
  with pytest.raises(ValueError, match="Cannot save as a Hugging Face gpt2 checkpoint"):
    hf.save(model, rope, tmp_path, model_type="gpt2")
  with pytest.raises(ValueError, match="model_type='t5'; use one of gpt2, llama, qwen2"):
    hf.save(model, rope, tmp_path, model_type="t5")

