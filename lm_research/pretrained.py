"""``init_from``: load a pretrained body (native checkpoint or Hugging Face folder) into a model
whose heads may differ. Matching parameters are copied, new ones keep their fresh values,
and both lists are logged; a parameter whose shape differs is an error.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from lm_research import checkpointing, paths
from lm_research.models import lora
from lm_research.models import build_model
from lm_research.models.config import LoRAConfig, ModelConfig
from lm_research.models.layout import (flatten, get_params, set_params, unflatten,
                                       unstack_layers)


def is_hugging_face(path: str) -> bool:
  """A Hugging Face folder (config.json, no checkpoints/) rather than a native checkpoint."""
  return (os.path.isfile(os.path.join(path, "config.json"))
          and not os.path.isdir(os.path.join(path, "checkpoints")))


def has_checkpoint(path: str) -> bool:
  """Whether ``path`` holds a native checkpoint (a workdir, checkpoints/ folder or step)."""
  try:
    checkpointing.latest_step(path)
  except ValueError:
    return False
  return True


@dataclasses.dataclass(frozen=True)
class Body:
  """A pretrained body, read once from its path: what it is, its architecture, its tokenizer."""

  path: str
  hugging_face: bool
  model: dict  # its ModelConfig fields
  saved_tokenizer: str  # where its tokenizer should be: a file (SentencePiece) or the folder

  def tokenizer_path(self) -> str:
    """Its tokenizer, or a one-line error when it is not where the body says."""
    if not paths.exists(self.saved_tokenizer):  # local or remote (gs://...)
      raise ValueError(f"init_from={self.path!r} has no tokenizer at {self.saved_tokenizer}; set "
                       "data.tokenizer_path to the tokenizer the model was pretrained with")
    return self.saved_tokenizer


def resolve(path: str) -> Body:
  """The body at ``path``: a Hugging Face folder, or a native workdir, checkpoints/ folder or
  step folder."""
  if is_hugging_face(path):
    from lm_research.interop import hf  # noqa: PLC0415  (only when a folder is given)
    return Body(path, True, hf.read_config(path).to_dict(), path)
  saved = checkpointing.read_config(path)
  workdir = os.path.dirname(checkpointing.latest_step(path)[0])
  tokenizer = (saved.get("data", {}).get("tokenizer_path", "")
               or os.path.join(workdir, "tokenizer.model"))
  return Body(path, False, dict(saved["model"]), tokenizer)


def _source_params(path: str) -> dict:
  """Loop-layout parameters from a native checkpoint or a Hugging Face folder."""
  if is_hugging_face(path):
    from lm_research.interop import hf  # noqa: PLC0415  (torch-free, but only needed here)
    model, _ = hf.load(path)
    return get_params(model)
  params = checkpoint_params(path)
  # A LoRA run's body is its adapted model: adapters folded into the kernels they adapt.
  adapters = LoRAConfig(**checkpointing.read_config(path).get("train", {}).get("lora", {}))
  return lora.merged(params, adapters) if adapters.rank else params


def check_base(path: str, checkpoint: str) -> None:
  """Raises one line when the init_from a LoRA checkpoint's frozen base comes from is gone."""
  if not paths.exists(path):
    raise ValueError(f"checkpoint {checkpoint} holds a LoRA run's adapters and task head only; "
                     f"its frozen base is init_from={path!r}, which does not exist: put it back "
                     "there, or pass --config.init_from=WHERE_IT_IS_NOW")


def checkpoint_params(path: str) -> dict:
  """A native checkpoint's parameters, loop layout, adapters unmerged. A LoRA run from
  init_from saved its trained parameters only: its frozen base is read from that init_from
  again (cast to train.lora.base_dtype), and a frozen weight the body lacked (e.g. a new
  pooler) is drawn again from the run's seed, as its training initialised it."""
  params = flatten(unstack_layers(checkpointing.read_params(path)))
  saved = checkpointing.read_config(path)
  adapters = LoRAConfig(**saved.get("train", {}).get("lora", {}))
  if not adapters.rank or not all(lora.is_trained_name(k) for k in params):
    return unflatten(params)  # a whole model (a LoRA run over a random base saves it all)
  directory, step = checkpointing.latest_step(path)
  check_base(saved.get("init_from", ""), f"{directory}/{step}")
  cfg = ModelConfig.from_dict(saved["model"]).replace(lora=adapters)
  wanted = flatten(get_params(nnx.eval_shape(lambda: build_model(
      cfg.replace(scan_layers=False), 0))))  # the names, loop layout
  base = flatten(_source_params(saved["init_from"]))
  if any(k not in params and k not in base for k in wanted):
    base = {**flatten(unstack_layers(nnx.to_pure_dict(jax.jit(lambda: nnx.state(
        build_model(cfg, saved.get("seed", 0)), nnx.Param))()))), **base}
  frozen = {k: base[k] for k in wanted if k not in params}
  if adapters.base_dtype:  # the frozen weights as the run stored them (lora.store_frozen)
    frozen = {k: jnp.asarray(v, adapters.base_dtype) if jnp.issubdtype(
        jnp.asarray(v).dtype, jnp.floating) else v for k, v in frozen.items()}
  return unflatten({**frozen, **{k: params[k] for k in wanted if k in params}})


def merge_params(target: dict, source: dict) -> tuple[dict, list[str], list[str]]:
  """Target params with every same-named source param copied in; (merged, missing, unused)."""
  flat_target, flat_source = flatten(target), flatten(source)
  merged, missing = {}, []
  for path, value in flat_target.items():
    if path not in flat_source:
      merged[path] = value
      missing.append(".".join(map(str, path)))
      continue
    loaded = np.asarray(flat_source[path])
    if loaded.shape != tuple(value.shape) and path[0] == "classifier":
      # A task head for another label set (e.g. a sentiment model fine-tuned anew) starts fresh.
      merged[path] = value
      missing.append(".".join(map(str, path)))
      continue
    if loaded.shape != tuple(value.shape):
      raise ValueError(f"init_from: parameter {'.'.join(map(str, path))} has shape "
                       f"{loaded.shape} in the checkpoint but {tuple(value.shape)} in the model; "
                       "the model config must match the pretrained body.")
    merged[path] = loaded
  unused = [".".join(map(str, p)) for p in flat_source if p not in flat_target]
  return unflatten(merged), missing, unused


def load_into(path: str, graphdef: nnx.GraphDef, params: Any, model_cfg: ModelConfig) -> Any:
  """Returns ``params`` (an nnx.State) with the pretrained weights at ``path`` copied in."""
  model = nnx.merge(graphdef, params)
  target = get_params(model)
  merged, missing, unused = merge_params(target, _source_params(path))
  if len(missing) == len(flatten(target)):
    raise ValueError(f"init_from={path!r} shares no parameter with this {model_cfg.family} "
                     "model; check that it is the same family.")
  adapters = [name for name in missing if name.endswith(lora.ADAPTERS)]
  if adapters:  # expected: a LoRA run's adapters start with B = 0, the model as the body
    logging.info("init_from: %d LoRA adapter matrices start fresh", len(adapters))
  missing = [name for name in missing if name not in adapters]
  if missing:
    logging.warning("init_from: %d parameters not in the checkpoint keep their fresh "
                    "initialisation: %s", len(missing), ", ".join(missing))
  if unused:
    logging.warning("init_from: %d checkpoint parameters are unused: %s", len(unused),
                    ", ".join(unused))
  shardings = jax.tree.map(lambda x: x.sharding, params)
  set_params(model, merged)
  return jax.device_put(nnx.state(model, nnx.Param), shardings)
