"""LoRA (train.lora): adapters start as the base model, merge into the kernels with the same
logits (and through hf.save / hf.load), train alone with optimizer state of their own, and
give the same losses on a 2 x 4 (fsdp x tensor) mesh as on one device; checkpoints hold the
adapters alone (the base is init_from's) and a resumed run ends bit for bit as an unbroken one."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import gpt_tiny
from lm_research import checkpointing, experiment, export, plot, pretrained, train
from lm_research.interop import hf
from lm_research.models import ModelConfig, build_model, lora
from lm_research.models.config import LoRAConfig
from lm_research.models.layers import LoRAParam
from lm_research.models.layout import (flatten, get_params, set_params, stack_layers,
                                       unflatten)
from lm_research.optim import make_optimizer

LLAMA = dict(family="decoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4,
             num_kv_heads=2, d_ff=64, position="rope", norm="rmsnorm", gated_mlp=True,
             activation="silu", use_bias=False, tie_embeddings=False, norm_eps=1e-6)
BERT = dict(family="encoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            max_len=24, type_vocab_size=2, pre_norm=False, pooler=True,
            head="sequence_classification", num_labels=3, norm_eps=1e-12)
T5 = dict(family="encoder_decoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4,
          d_ff=64, position="relative", norm="rmsnorm", use_bias=False, activation="relu",
          attention_scale=1.0, tie_embeddings=False)
GPT2 = dict(family="decoder", vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=128,
            max_len=24, activation="gelu_tanh")  # saved with q, k, v fused in c_attn
FAMILIES = {"llama": LLAMA, "bert": BERT, "t5": T5, "gpt2": GPT2}
ADAPTERS = LoRAConfig(rank=4, alpha=8.0, targets="all")
IDS = np.random.RandomState(0).randint(1, 64, (2, 10))
MASK = np.ones_like(IDS)
MASK[1, -3:] = 0


def _logits(model):
  if model.cfg.family == "encoder_decoder":
    return np.asarray(model(IDS, MASK, decoder_input_ids=IDS).logits)
  return np.asarray(model(IDS, attention_mask=MASK).logits)


def _without_adapters(params: dict) -> dict:
  return unflatten({k: v for k, v in flatten(params).items() if k[-1] not in lora.ADAPTERS})


def _randomise_adapters(model) -> None:
  """Non-zero B matrices (and A redrawn), so the adapters change the outputs."""
  rng = np.random.RandomState(1)
  nnx.update(model, jax.tree.map(lambda x: 0.3 * rng.normal(size=x.shape).astype(np.float32),
                                 nnx.state(model, LoRAParam)))


def test_bad_targets_fail_in_one_line():
  with pytest.raises(ValueError, match=r"^train.lora.targets: 'attn' is not a projection name; "
                     r"use a comma-separated list of q, k, v, o, gate, wi, wo, attention, mlp, "
                     r"all.$"):
    LoRAConfig(rank=8, targets="q,attn")
  with pytest.raises(ValueError, match="names 'gate', but this model's MLP is not gated"):
    ModelConfig(**BERT, lora=LoRAConfig(rank=8, targets="q,gate"))
  with pytest.raises(ValueError, match="train.lora.rank must be 0"):
    LoRAConfig(rank=-1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_starts_as_base_and_merges_to_the_same_logits(name, tmp_path):
  """(a) B = 0: the adapted model's logits are the base model's, bit for bit. (c) With B != 0,
  the merged model gives the adapted model's logits; so does hf.save -> hf.load."""
  cfg = ModelConfig(**FAMILIES[name], lora=ADAPTERS)
  adapted = build_model(cfg, 0)
  adapted_kinds = {k[-2] for k in flatten(get_params(adapted)) if k[-1] == "lora_a"}
  assert adapted_kinds == {"query", "key", "value", "out", "wi", "wo"} | (
      {"gate"} if name == "llama" else set())
  base = build_model(cfg.replace(lora=LoRAConfig()), 0)
  set_params(base, _without_adapters(get_params(adapted)))
  np.testing.assert_array_equal(_logits(adapted), _logits(base))

  _randomise_adapters(adapted)
  expected = _logits(adapted)
  assert np.abs(expected - _logits(base)).max() > 1e-2  # the adapters do change the outputs
  merged = lora.merge(adapted)
  assert not any(k[-1] in lora.ADAPTERS for k in flatten(get_params(merged)))
  assert np.abs(_logits(merged) - expected).max() <= 1e-5
  stacked = lora.merged(stack_layers(get_params(adapted)), ADAPTERS)  # a scanned model's layout
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), stacked,
               stack_layers(get_params(merged)))
  hf.save(adapted, cfg, tmp_path)
  reloaded, _ = hf.load(tmp_path)
  assert np.abs(_logits(reloaded) - expected).max() <= 1e-5


def test_only_adapters_and_the_task_head_train():
  """The trainable filter picks every adapter and the classifier, nothing else."""
  model = build_model(ModelConfig(**BERT, lora=ADAPTERS), 0)
  trained, frozen = lora.split(nnx.state(model, nnx.Param), lora.is_trainable)
  names = {".".join(map(str, k)) for k in flatten(nnx.to_pure_dict(trained))}
  assert {n for n in names if not n.endswith(("lora_a", "lora_b"))} == {
      "classifier.dense.kernel", "classifier.dense.bias"}
  assert len(names) == 2 + 2 * 6 * BERT["num_layers"]
  assert not any(k[-1] in lora.ADAPTERS for k in flatten(nnx.to_pure_dict(frozen)))


def _config(init_from, mesh=(1, 1, 1), **lora_fields):
  """A tiny Llama-style causal LM on synthetic data, 3 steps, from ``init_from``."""
  c = gpt_tiny.get_config()
  c.model.update({k: v for k, v in LLAMA.items() if k != "family"}, scan_layers=True)
  c.init_from = str(init_from)
  c.data.source = "synthetic"
  c.train.update(steps=3, batch_size=8, seq_len=16, warmup_steps=0, schedule="constant",
                 learning_rate=1e-2)
  c.train.lora.update(rank=4, targets="attention,mlp", **lora_fields)
  c.eval.every_steps = 0
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  return c


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


@pytest.mark.slow
def test_fine_tune_from_hf_folder_on_one_device_and_a_mesh(tmp_path):
  """(b) From a Hugging Face folder, 3 steps change the adapters only (the base weights stay
  bit for bit as loaded) and the optimizer state holds moments of the adapters only. (d) A
  2 x 4 fsdp x tensor mesh gives the same losses as one device. The run exports as a merged
  Hugging Face folder with the adapted model's logits (as init_from, it is that model too), or
  as its adapters alone."""
  folder = tmp_path / "llama"
  hf.save(build_model(ModelConfig(**LLAMA), 0), ModelConfig(**LLAMA), folder)
  base = flatten(get_params(hf.load(folder)[0]))
  losses = {}
  for mesh, devices in (((1, 1, 1), jax.devices()[:1]), ((1, 2, 4), jax.devices())):
    workdir = tmp_path / f"run{mesh}"
    train.train_and_evaluate(_config(folder, mesh), str(workdir), devices)
    losses[mesh] = _losses(workdir)
  assert len(losses[(1, 1, 1)]) == 3
  np.testing.assert_allclose(losses[(1, 2, 4)], losses[(1, 1, 1)], rtol=2e-5)

  # The checkpoint holds the adapters and their moments only; the base comes from init_from.
  stored = _stored_state(workdir)
  for part in ("params", "opt_state"):
    names = [jax.tree_util.keystr(path) for path, x in
             jax.tree_util.tree_leaves_with_path(stored[part]) if np.ndim(x)]
    assert len(names) == {"params": 2, "opt_state": 4}[part] * 7  # 7 projections, layers stacked
    assert all("lora_a" in k or "lora_b" in k for k in names)
  trained = flatten(pretrained.checkpoint_params(str(workdir)))
  assert set(trained) == set(flatten(get_params(build_model(ModelConfig(**LLAMA, lora=ADAPTERS),
                                                            0))))
  for key, value in trained.items():
    if key[-1] in lora.ADAPTERS:
      assert key[-1] == "lora_a" or np.abs(value).max() > 0  # B left zero: it trained
    else:
      np.testing.assert_array_equal(value, base[key])

  model, _ = export.trained_model(str(workdir))  # what `python -m lm_research.export` writes
  hf.save(model, model.cfg, tmp_path / "merged")
  merged, _ = hf.load(tmp_path / "merged")
  assert np.abs(_logits(merged) - _logits(model)).max() <= 1e-5
  graphdef, state = nnx.split(build_model(ModelConfig(**LLAMA), 0))  # the run as init_from
  body = nnx.merge(graphdef, pretrained.load_into(str(workdir), graphdef, state, model.cfg))
  assert np.abs(_logits(body) - _logits(model)).max() <= 1e-5
  written = export.write_adapters(model, str(folder), str(tmp_path / "adapters"))
  assert written == 2 * 7 * 2  # A and B of 7 projections in each of 2 layers
  with open(tmp_path / "adapters" / "adapter_config.json") as f:
    assert json.load(f) == dict(rank=4, alpha=16.0, targets="attention,mlp", base=str(folder))
  inspected, _ = plot.load_trained_model(str(workdir))  # plot's model: adapters, layers looped
  assert np.abs(_logits(inspected) - _logits(model)).max() <= 1e-5

  # Stopped at step 2 and rerun to 3, a run ends bit for bit where the uninterrupted one did.
  resumed = tmp_path / "resumed"
  for steps in (2, 3):
    c = _config(folder)
    c.train.steps = steps
    train.train_and_evaluate(c, str(resumed), jax.devices()[:1])
  assert _losses(resumed) == losses[(1, 1, 1)]
  jax.tree.map(np.testing.assert_array_equal, _stored_state(resumed),
               _stored_state(tmp_path / "run(1, 1, 1)"))
  # Without its base, resuming stops in one line and the checkpoint stays.
  os.rename(folder, tmp_path / "moved")
  with pytest.raises(ValueError, match=r"resumed/checkpoints/3 holds a LoRA run's adapters and "
                     r"task head only; its frozen base is init_from='.*llama', which does not "
                     r"exist: put it back there, or pass --config.init_from=WHERE_IT_IS_NOW$"):
    train.train_and_evaluate(_config(folder), str(resumed), jax.devices()[:1])
  assert checkpointing.latest_step(str(resumed))[1] == 3


def _stored_state(workdir) -> dict:
  """The latest checkpoint's state item as Orbax stored it (the RNG key as its raw data)."""
  directory, step = checkpointing.latest_step(str(workdir))
  stored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
  return {**stored, "rng": jax.random.key_data(stored["rng"])}


def test_a_random_base_is_checkpointed_whole(tmp_path):
  """init_from='' (no base to read again): the checkpoint holds every parameter."""
  exp = experiment.make_experiment(_config(""), jax.devices()[:1])
  tx, _ = make_optimizer(exp.optim_cfg)
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  try:
    _, state, _, _, _ = train.initial_state(exp, tx, ckpt)
    ckpt.save(1, state, None, exp.config.to_dict())
  finally:
    ckpt.close()
  assert len(jax.tree.leaves(_stored_state(tmp_path)["params"])) == len(
      jax.tree.leaves(state.params))


def test_bfloat16_base_keeps_adapters_in_float32():
  """train.lora.base_dtype='bfloat16': frozen weights stored in bf16, adapters in f32; the
  log line counts total vs trained parameters and the optimizer state's bytes."""
  c = _config("", base_dtype="bfloat16")
  exp = experiment.make_experiment(c, jax.devices()[:1])
  tx, _ = make_optimizer(exp.optim_cfg)
  _, abstract, _, _ = experiment.state_layout(exp, tx)
  dtypes = {k: v.dtype for k, v in flatten(nnx.to_pure_dict(abstract.params)).items()}
  assert {str(d) for k, d in dtypes.items() if k[-1] in lora.ADAPTERS} == {"float32"}
  assert {str(d) for k, d in dtypes.items() if k[-1] not in lora.ADAPTERS} == {"bfloat16"}
  line = lora.log_summary(abstract.params, abstract.opt_state, exp.step_cfg.trainable)
  # 2 layers x (q 32x4+4x32, k, v 32x4+4x16, o 32x4+4x32, gate, wi 32x4+4x64, wo 64x4+4x32)
  adapters = 2 * (256 + 2 * 192 + 256 + 2 * 384 + 384)
  assert adapters == 4096 and line.startswith("parameters: total ")
  assert f"trained {adapters:,} " in line
  # Adam's two float32 moments of the adapters only, and two int32 step counters
  assert line.endswith(f"optimizer state {2 * 4 * adapters + 8:,} bytes")
