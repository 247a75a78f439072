"""Config tests: every configs/*.py (and variant) builds abstractly, with Hugging Face's parameter
counts, valid logical axis names, and its own command in its docstring.

Models are built with ``nnx.eval_shape`` (no memory for weights) and the Hugging Face references
on torch's ``meta`` device, so even the base sizes cost only seconds.
"""

import functools
import importlib
import pathlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

from lm_research import sharding
from lm_research.models import ModelConfig, build_model

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("base", "__init__"))


def variants(name: str) -> list[str]:
  """'' plus every ``arg == "X"`` a config file's get_config tests for."""
  source = (CONFIG_DIR / f"{name}.py").read_text()
  return [""] + sorted(set(re.findall(r"""arg\s*==\s*["'](\w+)["']""", source)))


CASES = [(name, arg) for name in NAMES for arg in variants(name)]
CASE_IDS = [f"{name}:{arg}" if arg else name for name, arg in CASES]
REQUIRED = {"bert_tiny", "bert_base", "gpt_tiny", "gpt2_small", "t5_tiny", "t5_base"}
KNOWN_VARIANTS = {("gpt_tiny", "llama"), ("t5_tiny", "v1_1"), ("t5_base", "v1_1")}
# The glossary of logical axes: the names sharding.py has a rule for (None = unnamed).
AXIS_NAMES = set(sharding.PARAM_RULES) | {None}


def load(name: str, arg: str = ""):
  """The config file's ``get_config(arg)``."""
  return importlib.import_module(f"configs.{name}").get_config(arg)


@functools.cache
def abstract_model(name: str, arg: str, scan_layers: bool | None = None):
  """(ModelConfig, model of ShapeDtypeStructs) for a config, optionally with scan toggled."""
  cfg = ModelConfig.from_dict(load(name, arg).model)
  if scan_layers is not None:
    cfg = cfg.replace(scan_layers=scan_layers)
  return cfg, nnx.eval_shape(lambda: build_model(cfg))


def param_count(model) -> int:
  """Total number of parameters of a (possibly abstract) model."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def hf_param_count(cfg: ModelConfig) -> int | None:
  """Parameters of the matching transformers model built on the meta device (None: no match)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  plain = (cfg.norm == "layernorm" and cfg.use_bias
           and not cfg.gated_mlp and cfg.tie_embeddings and cfg.kv_heads == cfg.num_heads
           and cfg.head_dim in (None, cfg.d_model // cfg.num_heads))
  learned = plain and cfg.position == "learned"
  position_table = 0  # parameters the transformers model has and ours does not
  with torch.device("meta"):
    if (cfg.family == "encoder" and cfg.head == "pretraining" and plain and cfg.pooler
        and cfg.position in ("learned", "rope")):
      model = transformers.BertForPreTraining(transformers.BertConfig(
          vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
          num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
          max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size))
      if cfg.position == "rope":  # a rotary BERT (bert_tiny): BERT without its position table
        position_table = cfg.max_len * cfg.d_model
    elif cfg.family == "decoder" and cfg.head == "lm" and learned and cfg.pre_norm:
      model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
          vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model,
          n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.d_ff))
    elif (cfg.family == "decoder" and cfg.head == "lm" and cfg.position == "rope"
          and cfg.norm == "rmsnorm" and cfg.gated_mlp and not cfg.use_bias):
      model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
          vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
          num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
          num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
          max_position_embeddings=cfg.max_len, tie_word_embeddings=cfg.tie_embeddings))
    elif (cfg.family == "encoder_decoder" and cfg.position == "relative"
          and cfg.norm == "rmsnorm" and not cfg.use_bias):
      model = transformers.T5ForConditionalGeneration(transformers.T5Config(
          vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.dim_per_head, d_ff=cfg.d_ff,
          num_layers=cfg.num_layers, num_decoder_layers=cfg.decoder_layers,
          num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.rel_buckets,
          relative_attention_max_distance=cfg.rel_max_distance,
          feed_forward_proj="gated-gelu" if cfg.gated_mlp else "relu",
          tie_word_embeddings=cfg.tie_embeddings))
    else:
      return None
  count = sum(p.numel() for p in model.parameters()) - position_table  # tied tensors once
  if (cfg.family == "encoder_decoder" and not cfg.tie_embeddings
      and model.lm_head.weight is model.shared.weight):
    # transformers >= 5 always ties T5's lm_head in the module (its tie flag now only selects
    # the output rescaling); T5 v1.1 checkpoints store their own lm_head.weight: count it.
    count += model.lm_head.weight.numel()
  return count


def test_required_configs_and_variants_are_discovered():
  """The configs docs/design.md promises exist, and their known variants are found by the glob."""
  assert REQUIRED <= set(NAMES), sorted(REQUIRED - set(NAMES))
  assert KNOWN_VARIANTS <= set(CASES), sorted(KNOWN_VARIANTS - set(CASES))


@pytest.mark.parametrize("name,arg", CASES, ids=CASE_IDS)
def test_config_builds_abstractly_with_hf_param_count(name, arg):
  """Each config (variant) builds without allocating weights and matches transformers' size."""
  cfg, model = abstract_model(name, arg)
  leaves = jax.tree.leaves(nnx.state(model))
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert type(model).__name__ == {"encoder": "Encoder", "decoder": "Decoder",
                                  "encoder_decoder": "EncoderDecoder"}[cfg.family]
  want = hf_param_count(cfg)
  if name in REQUIRED:
    assert want is not None, "the published configs must map onto a transformers model"
  if want is not None:
    assert param_count(model) == want


@pytest.mark.parametrize("name", [n for n in NAMES if len(variants(n)) > 1])
def test_unknown_variant_is_rejected(name):
  """A config with variants names them when given an unknown one."""
  with pytest.raises(ValueError, match="nonsense"):
    load(name, "nonsense")


@pytest.mark.parametrize("name,arg,published,approx", [
    ("bert_base", "", 110_106_428, 110e6),  # with the MLM + NSP heads
    ("gpt2_small", "", 124_439_808, 124e6),
    ("t5_base", "", 222_903_552, 220e6),
    ("t5_base", "v1_1", 247_577_856, 248e6),
])
def test_base_sizes_match_published_counts(name, arg, published, approx):
  """Base configs have exactly the Hugging Face models' parameter counts (~110M/124M/220M)."""
  cfg, model = abstract_model(name, arg)
  count = param_count(model)
  assert count == hf_param_count(cfg)
  assert count == published
  assert abs(count / approx - 1) < 0.015


@pytest.mark.parametrize("name,arg", CASES, ids=CASE_IDS)
def test_params_have_logical_axis_names(name, arg):
  """Every parameter names each of its axes from the glossary; scanned stacks put 'layers' first."""
  for scan in (False, True):
    cfg, model = abstract_model(name, arg, scan_layers=scan)
    state = nnx.state(model, nnx.Param)
    shapes = dict(nnx.to_flat_state(state))
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
    assert shapes.keys() == specs.keys()
    stacked = 0
    for path, var in specs.items():
      where = f"{'.'.join(map(str, path))} (scan_layers={scan})"
      spec = tuple(var.get_value())
      assert len(spec) == len(shapes[path].get_value().shape), where
      assert set(spec) <= AXIS_NAMES, where
      if scan and "blocks" in path:
        stacked += 1
        assert spec[0] == "layers" and "layers" not in spec[1:], where
        assert shapes[path].get_value().shape[0] in (cfg.num_layers, cfg.decoder_layers), where
      else:
        assert "layers" not in spec, where
    assert stacked > 0 if scan else stacked == 0


@pytest.mark.parametrize("name", NAMES)
def test_docstring_gives_its_command(name):
  """The config's module docstring shows the command that runs it."""
  doc = importlib.import_module(f"configs.{name}").__doc__ or ""
  assert f"python -m lm_research.main --config=configs/{name}.py" in doc
