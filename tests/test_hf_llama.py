"""Llama / Qwen2 / Mistral through hf.load / hf.save / generate against transformers, tiny random
models; and a tokenizer folder's special tokens and chat template against apply_chat_template."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import nnx
from safetensors.torch import save_file

from lm_research import sharding
from lm_research.data import chat_template
from lm_research.data.tokenizer import load_tokenizer
from lm_research.decoding import DecodeConfig, generate
from lm_research.interop import hf
from lm_research.models.layout import get_params

# Trains, compiles several models or starts processes: the full suite runs it, the fast tier
# (-m 'not slow') does not.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_decoding_compiles")]

TOL = 1e-4
_SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=40, max_position_embeddings=128, bos_token_id=None,
              eos_token_id=None, pad_token_id=None)
CASES = {
    # GQA, head_dim != hidden / heads, untied head, Llama 3 RoPE scaling: with
    # original_max_position_embeddings=64 the 6 frequencies fall in all three bands.
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        num_key_value_heads=2, head_dim=12, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
        num_key_value_heads=1, tie_word_embeddings=True, sliding_window=64,
        initializer_range=0.2,  # at 0.02 its greedy output repeats one token: a weak check
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(
        num_key_value_heads=2, sliding_window=None, head_dim=8)),
}
_apply = nnx.jit(lambda model, ids, mask: model(ids, attention_mask=mask).logits)



@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  """(name, transformers model, its folder, our model, cfg, ids, mask, transformers' logits)."""
  name = request.param
  config_cls, model_cls, kw = CASES[name]
  torch.manual_seed(0)
  theirs = model_cls(config_cls(**_SMALL, **kw)).eval()
  with torch.no_grad():  # random init leaves biases at zero: make Qwen2's q/k/v biases count
    for p in theirs.parameters():
      if p.ndim == 1 and not torch.all(p == 1):
        p.normal_(0, 0.5)
  folder = tmp_path_factory.mktemp(name)
  theirs.save_pretrained(folder)
  ids = np.random.RandomState(0).randint(1, 96, (2, 9))
  mask = np.ones_like(ids)
  mask[1, -3:] = 0  # right padding: logits of real tokens only are compared
  with torch.no_grad():
    ref = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  model, cfg = hf.load(folder)
  return name, theirs, folder, model, cfg, ids, mask, ref


def _delta(a, b, mask):
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))[mask == 1].max())


def test_load_parity(case):
  name, theirs, _, model, cfg, ids, mask, ref = case
  assert cfg.position == "rope" and cfg.gated_mlp and cfg.norm == "rmsnorm"
  assert cfg.kv_heads == theirs.config.num_key_value_heads
  assert cfg.tie_embeddings == (name == "qwen2")
  assert cfg.qkv_bias == (name == "qwen2") and not cfg.use_bias
  assert (cfg.rope_scaling_factor, cfg.rope_original_max_len) == (
      (8.0, 64) if name == "llama" else (1.0, 8192))
  assert _delta(_apply(model, ids, mask), ref, mask) <= TOL


def test_save_round_trip(case, tmp_path):
  """hf.save -> transformers' from_pretrained: the same class, the same logits; Llama's in
  shards of at most 20 kB with an index (its layers are 13 kB each)."""
  name, _, _, model, cfg, ids, mask, ref = case
  hf.save(model, cfg, tmp_path, model_type="mistral" if name == "mistral" else None,
          max_shard_bytes=20_000 if name == "llama" else 5 * 10**9)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model_type"] == name
  shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
  if name == "llama":
    n = len(shards)
    assert n > 2 and shards[-1] == f"model-{n:05d}-of-{n:05d}.safetensors"
    with pytest.raises(ValueError, match="already holds model-00001-of-.* hf.save into a new"):
      hf.save(model, cfg, tmp_path)  # a single file would mix with the shards
  else:
    assert shards == ["model.safetensors"]
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(again).__name__ == type(case[1]).__name__
  with torch.no_grad():
    logits = again(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  assert _delta(logits, ref, mask) <= TOL
  reloaded, reloaded_cfg = hf.load(tmp_path)  # from the shards and index for Llama
  assert reloaded_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, get_params(reloaded), get_params(model))


def test_greedy_generation_matches_transformers(case):
  """The KV-cache generate (GQA cache, RoPE positions) on a right-padded batch against
  transformers' greedy output for each prompt alone."""
  _, theirs, _, model, _, ids, _, _ = case
  prompt, lengths = ids[:, :5], (5, 3)
  mask = (np.arange(5)[None] < np.array(lengths)[:, None]).astype(np.int32)
  got = generate(model, prompt * mask, mask, DecodeConfig(max_new_tokens=8, eos_id=-1))
  for row, length in enumerate(lengths):
    with torch.no_grad():
      want = theirs.generate(torch.tensor(prompt[row:row + 1, :length]), max_new_tokens=8,
                             do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(got.tokens[row]), want[0, length:].numpy())


def test_load_onto_fsdp_mesh(case, tmp_path):
  """mesh=: every parameter arrives in its FSDP x tensor sharding, same logits; a bfloat16
  checkpoint too (cast shard by shard), scanned layers too."""
  name, theirs, folder, model, _, ids, mask, ref = case
  if name != "llama":
    pytest.skip("one sharded load is enough")
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
  sharded, _ = hf.load(folder, mesh=mesh)
  emb = sharded.embeddings.token.embedding[...]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (48, 8)
  assert _delta(_apply(sharded, ids, mask), ref, mask) <= TOL
  save_file({k: v.to(torch.bfloat16).contiguous() for k, v in theirs.state_dict().items()},
            str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  shutil.copy(folder / "config.json", tmp_path / "config.json")
  scanned, cfg = hf.load(tmp_path, mesh=mesh, scan_layers=True)
  assert cfg.scan_layers and scanned.stack.layers.blocks.attn.query.kernel[...].sharding.spec == (
      jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-6),
               get_params(scanned), get_params(model))


def _write_config(folder, model_type, **change):
  """A config.json (and an empty safetensors file) that read_config parses without weights."""
  hf_cfg = {"model_type": model_type, "hidden_size": 32, "num_attention_heads": 4,
            "num_hidden_layers": 1, "intermediate_size": 40, "vocab_size": 96,
            "max_position_embeddings": 128, **change}
  (folder / "config.json").write_text(json.dumps(hf_cfg))
  (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


def test_transformers_4_rope_fields(tmp_path):
  """Llama 3.1's config.json as published: rope_theta and rope_scaling, no rope_parameters."""
  _write_config(tmp_path, "llama", rope_theta=500000.0, rope_scaling={
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192, "rope_type": "llama3"}, head_dim=None,
      num_key_value_heads=2, tie_word_embeddings=False)
  cfg = hf.read_config(tmp_path)
  assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
          cfg.rope_high_freq_factor, cfg.rope_original_max_len) == (5e5, 8.0, 1.0, 4.0, 8192)
  assert (cfg.dim_per_head, cfg.kv_heads, cfg.tie_embeddings) == (8, 2, False)


@pytest.mark.parametrize("model_type, change, message", [
    ("mistral", {"sliding_window": 64}, "config.json sliding_window=64 is below "
     "max_position_embeddings=128; sliding-window attention is not supported"),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "config.json rope_scaling rope_type='yarn' is not supported"),
    ("llama", {"attention_bias": True}, "config.json attention_bias=true with mlp_bias=false "
     "is not supported"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, "config.json "
     "sliding_window=16 is below"),
    ("qwen2", {"quantization_config": {"quant_method": "awq"}}, "config.json "
     "quantization_config (awq) is not supported"),
])
def test_unsupported_fields_fail_in_one_line(model_type, change, message, tmp_path):
  _write_config(tmp_path, model_type, **change)
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    hf.read_config(tmp_path)
  assert "\n" not in str(e.value)


# Qwen2.5's chat template (system default, tools branch unused): the multi-turn reference.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content']"
    " + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    "    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
    "{{- '' if tools is none else tools | tojson }}")


def test_tokenizer_folder_chat_template_and_specials(tmp_path):
  """A byte-level BPE tokenizer.json folder: declared eos, and the template as transformers
  renders it (string and ids) on a multi-turn Chinese / English chat."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok.train_from_iterator(["你好，世界。Hello world, how are you?"] * 4,
                          tokenizers.trainers.BpeTrainer(
                              vocab_size=400, special_tokens=specials,
                              initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "Qwen2Tokenizer", "chat_template": QWEN_TEMPLATE,
      "eos_token": "<|im_end|>",
      "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
                    "normalized": False, "rstrip": False, "single_word": False, "special": True},
      "bos_token": None}))
  chat = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
          {"role": "assistant", "content": "Hello! 你好。"}, {"role": "user", "content": "再见"}]
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
  want = theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
  got = chat_template.load_chat_template(tmp_path).render(chat, add_generation_prompt=True)
  assert got == want and got.endswith("<|im_start|>assistant\n")
  ours = load_tokenizer(str(tmp_path), "decoder")
  assert (ours.eos_id, ours.pad_id) == (tok.token_to_id("<|im_end|>"),
                                        tok.token_to_id("<|endoftext|>"))
  assert ours.encode(got) == theirs(want, add_special_tokens=False)["input_ids"]
  marked = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
            "{{ m.content | tojson }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n"
            "{% endfor %}")
  assert chat_template.ChatTemplate(marked, {}).render(chat) == theirs.apply_chat_template(
      chat, chat_template=marked, tokenize=False)
  with pytest.raises(ValueError, match="has no chat template"):
    chat_template.load_chat_template(tmp_path / "..")
