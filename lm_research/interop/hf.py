"""Load and save Hugging Face BERT, GPT-2, T5, Llama, Qwen2 and Mistral folders (config.json +
safetensors, never pickle).

  model, cfg = hf.load("bert-base-uncased/")         # head inferred from architectures[0]
  model, cfg = hf.load(path, head="sequence_classification")  # a new head starts fresh
  model, cfg = hf.load("Qwen2.5-7B/", mesh=mesh)     # each tensor straight into its sharding
  hf.save(model, cfg, "out/")                         # transformers' from_pretrained reads it
                                                      # (LoRA adapters merged into the weights)

Each model type's config and weight-name mapping lives in its own module (bert.py, gpt2.py,
t5.py, llama.py, listed in families.py); this module does the files, the checks and the warnings.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors.numpy import save_file

from lm_research import sharding
from lm_research.interop.families import FAMILIES, for_saving, model_type_of
from lm_research.interop.family import HEAD_PARAMS, HFFamily, same
from lm_research.models import ModelConfig, build_model, lora
from lm_research.models.layout import flatten, get_params, set_params, stack_layers, unflatten

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_OTHER_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_INDEX = "model.safetensors.index.json"


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file, memory-mapped.

  Parsed by hand (an 8-byte header length, a JSON header, raw bytes) because safetensors' numpy
  reader rejects bfloat16, the dtype many recent checkpoints are stored in.
  """
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
  header.pop("__metadata__", None)
  end = max((info["data_offsets"][1] for info in header.values()), default=0)
  data = np.memmap(path, np.uint8, mode="r", offset=8 + size, shape=(end,)) if end else None
  out = {}
  for key, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path} stores {key} as {info['dtype']}, which hf.load cannot read; "
                       "save the checkpoint in float32, float16 or bfloat16.")
    start, stop = info["data_offsets"]
    out[key] = data[start:stop].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def _weight_files(folder: Path) -> list[Path]:
  """The folder's safetensors files (all shards of an index), or a one-line error."""
  index = folder / _INDEX
  if index.is_file():
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    for name in names:
      if not (folder / name).is_file():
        raise ValueError(f"{folder}/model.safetensors.index.json lists shard {name}, which is "
                         "missing; download every shard of the checkpoint.")
    return [folder / name for name in names]
  files = sorted(folder.glob("*.safetensors"))
  if files:
    return files
  others = sorted(p.name for p in folder.iterdir() if p.suffix in _OTHER_FORMATS)
  if others:
    raise ValueError(
        f"{folder} has weights only as {others[0]}, a pickle-based format hf.load never opens; "
        "convert it to safetensors first (transformers: from_pretrained(folder)"
        ".save_pretrained(folder, safe_serialization=True)).")
  raise ValueError(f"{folder} has no *.safetensors weights next to config.json; download the "
                   "checkpoint's model.safetensors (or all its shards) into that folder.")


def _normalise(fam: HFFamily, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Checkpoint keys in one canonical spelling: old TF names, with the base-model prefix."""
  out = {}
  for key, value in tensors.items():
    # TF-converted BERT checkpoints (e.g. bert-base-uncased) call LayerNorm params gamma/beta.
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    if key.split(".")[0] in fam.roots:
      key = fam.prefix + key
    out[key] = value
  return fam.fix_tensors(out)


def _infer_head(fam: HFFamily, hf: dict, tensors: dict) -> str:
  """The head named by architectures[0], or guessed from the weights when it is absent."""
  archs = hf.get("architectures") or []
  if not archs:
    return fam.head_from_weights(tensors)
  if archs[0] not in fam.archs:
    raise ValueError(
        f"config.json architectures[0]={archs[0]!r} is not supported; supported: "
        f"{', '.join(fam.archs)}. Pass head='none' to load just the base model.")
  return fam.archs[archs[0]]


def _short(names: list[str], n: int = 8) -> str:
  more = f" (+{len(names) - n} more)" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def _tied_copies(fam: HFFamily, cfg: ModelConfig, tensors: dict, used: set,
                 folder: Path) -> set[str]:
  """Stored copies of tied weights (e.g. BERT's MLM decoder): used, though never read."""
  copies = set()
  for alias, source in fam.tied_aliases.items():
    if alias in tensors and source in used:
      if same(tensors[alias], tensors[source]):
        copies.add(alias)
      elif fam.strict_ties:
        raise ValueError(f"{folder}: {alias} differs from {source}; an untied copy is not "
                         "supported, load with head='none' to drop it.")
  if fam.lm_tie_source and cfg.tie_embeddings and same(tensors.get("lm_head.weight"),
                                                       tensors.get(fam.lm_tie_source)):
    copies.add("lm_head.weight")
  return copies


def _fresh(leaf: str, shape: tuple, cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
  """A new head weight as our initialisers (and HF's) make it, drawn in numpy (no compile)."""
  if leaf == "bias":
    return np.zeros(shape, np.float32)
  if leaf == "scale":
    return np.ones(shape, np.float32)
  return rng.normal(0.0, cfg.initializer_range, shape).astype(np.float32)


def _read_folder(path: str | Path, head: str | None):
  """(folder, config.json dict, family, memory-mapped tensors, our ModelConfig)."""
  folder = Path(path)
  folder = folder.parent if folder.name == "config.json" else folder
  if not (folder / "config.json").is_file():
    raise ValueError(f"{folder} has no config.json; pass a Hugging Face model folder "
                     "(config.json + *.safetensors).")
  hf = json.loads((folder / "config.json").read_text())
  model_type = model_type_of(hf)
  if model_type not in FAMILIES:
    raise ValueError(f"config.json model_type={model_type!r} is not supported; hf.load reads "
                     f"{', '.join(FAMILIES)} checkpoints.")
  fam = FAMILIES[model_type]
  tensors: dict[str, np.ndarray] = {}
  for file in _weight_files(folder):
    tensors.update(_read_safetensors(file))
  tensors = _normalise(fam, tensors)
  head = _infer_head(fam, hf, tensors) if head is None else head
  if head not in fam.heads():
    raise ValueError(f"head={head!r} does not exist for {model_type}; use one of "
                     f"{', '.join(fam.heads())}.")
  try:
    cfg = fam.config_from_hf(hf, tensors, head)
  except KeyError as e:
    raise ValueError(f"{folder}/config.json lacks {e}, which {model_type} needs; use the "
                     "config.json that came with the checkpoint.") from None
  return folder, hf, fam, tensors, cfg


def read_config(path: str | Path, head: str | None = None) -> ModelConfig:
  """The ModelConfig of a Hugging Face folder, without building the model (weights stay mapped)."""
  return _read_folder(path, head)[-1]


def _place_sharded(model: nnx.Module, params: dict, mesh: Mesh) -> None:
  """Writes loop-layout host ``params`` into ``model``, each device receiving only its shard."""
  state = nnx.state(model, nnx.Param)
  abstract = nnx.to_pure_dict(state)
  if model.cfg.scan_layers:
    with jax.default_device(jax.devices("cpu")[0]):  # stack on the host, not on one accelerator
      params = stack_layers(params)
  shardings = nnx.to_pure_dict(sharding.param_shardings(mesh, state, model.cfg.kv_heads))

  def place(value, want, where):
    value = np.asarray(value)
    return jax.make_array_from_callback(
        tuple(want.shape), where, lambda index: np.asarray(value[index], want.dtype))
  nnx.replace_by_pure_dict(state, jax.tree.map(place, params, abstract, shardings))
  nnx.update(model, state)


def load(path: str | Path, head: str | None = None, dtype: str | None = None,
         scan_layers: bool = False, mesh: Mesh | None = None) -> tuple[nnx.Module, ModelConfig]:
  """Builds the NNX model of a Hugging Face folder; returns (model, cfg).

  With ``mesh``, each parameter goes from the memory-mapped files straight into its FSDP /
  tensor-parallel sharding (sharding.PARAM_RULES): no device ever holds the whole model.
  """
  folder, hf, fam, tensors, cfg = _read_folder(path, head)
  head, model_type = cfg.head, fam.model_type
  cfg = cfg.replace(scan_layers=scan_layers,
                    **({"dtype": jnp.dtype(dtype).name} if dtype is not None else {}))
  # Shapes only: initialising every weight just to overwrite it costs many small compiles.
  loop_cfg = cfg.replace(scan_layers=False)  # set_params takes the loop layout and stacks it
  params = flatten(get_params(nnx.eval_shape(lambda: build_model(loop_cfg, 0))))
  used, fresh, fresh_paths, missing = set(), [], [], []
  for entry in fam.entries(cfg, rescaled_lm_head=fam.rescaled_lm_head(hf, tensors)):
    ours, keys = entry.ours, entry.keys
    if not keys:  # no such tensor in HF: the parameter is zero
      params[ours] = np.zeros(params[ours].shape, np.float32)
      continue
    found = next((k for k in keys if k in tensors), None)
    if found is None:
      if ours[0] in HEAD_PARAMS:
        fresh.append(keys[0])
        fresh_paths.append(ours)
      else:
        missing.append(keys[0])
      continue
    used.add(found)
    value = entry.to_ours(tensors[found], cfg)
    if value.shape != tuple(params[ours].shape):
      raise ValueError(
          f"{folder}: tensor {found} has shape {tuple(tensors[found].shape)}, but config.json "
          f"implies {tuple(params[ours].shape)} ({'.'.join(map(str, ours))}); the weights and "
          "config.json disagree, use the config.json that came with these weights.")
    params[ours] = value
  if missing:
    raise ValueError(f"{folder} lacks {len(missing)} weights the {model_type} body needs "
                     f"({_short(missing, 3)}); the checkpoint is incomplete or not a "
                     f"{model_type} model.")
  used |= _tied_copies(fam, cfg, tensors, used, folder)
  unused = sorted(set(tensors) - used)
  if unused:
    warnings.warn(f"hf.load({folder.name}): ignored {len(unused)} checkpoint tensors the "
                  f"{head!r} model does not use: {_short(unused)}.", stacklevel=2)
  if fresh:
    warnings.warn(f"hf.load({folder.name}): {len(fresh)} weights of head={head!r} are not in the "
                  f"checkpoint and start freshly initialised: {_short(fresh, 20)}.", stacklevel=2)
  rng = np.random.default_rng(0)
  for ours in fresh_paths:
    params[ours] = _fresh(ours[-1], params[ours].shape, cfg, rng)
  model = nnx.eval_shape(lambda: build_model(cfg, 0))
  if jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))):
    model = build_model(cfg, 0)  # state besides parameters needs real initial values
  if mesh is None:
    set_params(model, unflatten(params))
  else:
    _place_sharded(model, unflatten(params), mesh)
  return model, cfg


def _write_weights(folder: Path, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> None:
  """model.safetensors, or shards of at most ``max_shard_bytes`` (bar a bigger single tensor)
  and the index transformers reads them by, named as transformers names them."""
  sharded = sum(v.nbytes for v in tensors.values()) > max_shard_bytes
  # transformers reads model.safetensors before an index: the two layouts must not mix.
  stale = sorted(folder.glob("*.safetensors")) if sharded else (
      sorted(folder.glob("model-*-of-*.safetensors")) + sorted(folder.glob(_INDEX)))
  if stale:
    raise ValueError(f"{folder} already holds {stale[0].name}, which would mix with the "
                     f"{'sharded' if sharded else 'single-file'} weights being saved; hf.save "
                     "into a new or empty folder.")
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key, value in tensors.items():
    value = np.ascontiguousarray(value)
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = value
    size += value.nbytes
  if len(shards) == 1:
    save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(folder / name), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(shard, name))
  index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
           "weight_map": weight_map}
  (folder / _INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save(model: nnx.Module, cfg: ModelConfig, path: str | Path,
         model_type: str | None = None, max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes config.json and safetensors weights that transformers loads with the same outputs.

  ``model_type``: the HF type to write (e.g. 'mistral'); None picks it from ``cfg``
  (families.for_saving: a RoPE decoder is Llama, or Qwen2 with q/k/v-only biases).
  Weights over ``max_shard_bytes`` (5 GB, transformers' usual size) go into shards + an index.
  LoRA adapters (train.lora) are merged into the kernels they adapt: W + (alpha / rank) A B.
  """
  fam = for_saving(cfg, model_type)
  hf = fam.config_to_hf(cfg)
  arch = hf["architectures"][0]
  params = flatten(lora.merged(get_params(model), model.cfg.lora))
  tensors: dict[str, np.ndarray] = {}
  fused: dict[str, dict[int, np.ndarray]] = {}
  for entry in fam.entries(cfg):
    value = entry.to_hf(params[entry.ours])
    if not entry.keys:
      if np.any(value != 0):
        raise ValueError(f"Cannot save as {arch}: it has no {'.'.join(map(str, entry.ours))}, "
                         "but ours is non-zero; fine-tune without it or save a native checkpoint.")
      continue
    if entry.fused_third is not None:
      fused.setdefault(entry.keys[0], {})[entry.fused_third] = value
      continue
    tensors[entry.keys[0]] = value
  for key, parts in fused.items():
    tensors[key] = np.concatenate([parts[i] for i in sorted(parts)], axis=-1)
  tensors = fam.save_fixups(tensors, cfg, arch)
  if fam.archs[arch] == "none" and fam.prefix:
    # A base model saved alone carries no 'bert.' / 'transformer.' prefix.
    tensors = {k.removeprefix(fam.prefix): v for k, v in tensors.items()}
  folder = Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  _write_weights(folder, tensors, max_shard_bytes)  # checks the folder before writing anything
  (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
