"""Load and save Hugging Face BERT, GPT-2 and T5 folders (config.json + safetensors, never pickle).

  model, cfg = hf.load("bert-base-uncased/")         # head inferred from architectures[0]
  model, cfg = hf.load(path, head="sequence_classification")  # a new head starts fresh
  hf.save(model, cfg, "out/")                         # transformers' from_pretrained reads it

The per-family name and config mapping lives in ``hf_convert``; this module does the files,
the checks and the warnings.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lm_research.interop import hf_convert as conv
from lm_research.models import ModelConfig, build_model
from lm_research.models.layout import flatten, get_params, set_params, unflatten

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_OTHER_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


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
  index = folder / "model.safetensors.index.json"
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


def _to_ours(x: np.ndarray, kind: str, cfg: ModelConfig) -> np.ndarray:
  """Applies an entry's ``kind`` (see hf_convert) to a checkpoint tensor."""
  x = np.asarray(x, np.float32)
  if kind == "T":
    return x.T
  if kind == "Ts":
    return x.T * np.float32(cfg.d_model ** -0.5)
  if kind in ("q", "k", "v"):
    third = x.shape[-1] // 3
    i = "qkv".index(kind)
    return x[..., i * third:(i + 1) * third] if x.shape[-1] % 3 == 0 else x
  return x


def _short(names: list[str], n: int = 8) -> str:
  more = f" (+{len(names) - n} more)" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def _tied_copies(model_type: str, cfg: ModelConfig, tensors: dict, used: set,
                 folder: Path) -> set[str]:
  """Stored copies of tied weights (e.g. BERT's MLM decoder): used, though never read."""
  copies = set()
  for alias, source in conv.tied_aliases(model_type).items():
    if alias in tensors and source in used:
      if conv.same(tensors[alias], tensors[source]):
        copies.add(alias)
      elif alias.startswith("cls."):
        raise ValueError(f"{folder}: {alias} differs from {source}; an untied BERT MLM "
                         "decoder is not supported, load with head='none' to drop it.")
  lm_source = {"gpt2": "transformer.wte.weight", "t5": "shared.weight"}.get(model_type)
  if lm_source and cfg.tie_embeddings and conv.same(tensors.get("lm_head.weight"),
                                                     tensors.get(lm_source)):
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
  """(folder, config.json dict, model type, memory-mapped tensors, our ModelConfig)."""
  folder = Path(path)
  folder = folder.parent if folder.name == "config.json" else folder
  if not (folder / "config.json").is_file():
    raise ValueError(f"{folder} has no config.json; pass a Hugging Face model folder "
                     "(config.json + *.safetensors).")
  hf = json.loads((folder / "config.json").read_text())
  model_type = conv.model_type_of(hf)
  if model_type not in conv.FAMILY:
    raise ValueError(f"config.json model_type={model_type!r} is not supported; hf.load reads "
                     f"{', '.join(conv.FAMILY)} checkpoints.")
  tensors: dict[str, np.ndarray] = {}
  for file in _weight_files(folder):
    tensors.update(_read_safetensors(file))
  tensors = conv.normalise(model_type, tensors)
  head = conv.infer_head(model_type, hf, tensors) if head is None else head
  heads = sorted(set(conv.ARCHS[model_type].values()))
  if head not in heads:
    raise ValueError(f"head={head!r} does not exist for {model_type}; use one of "
                     f"{', '.join(heads)}.")
  try:
    cfg = conv.config_from_hf(model_type, hf, tensors, head)
  except KeyError as e:
    raise ValueError(f"{folder}/config.json lacks {e}, which {model_type} needs; use the "
                     "config.json that came with the checkpoint.") from None
  return folder, hf, model_type, tensors, cfg


def read_config(path: str | Path, head: str | None = None) -> ModelConfig:
  """The ModelConfig of a Hugging Face folder, without building the model (weights stay mapped)."""
  return _read_folder(path, head)[-1]


def load(path: str | Path, head: str | None = None, dtype: str | None = None,
         scan_layers: bool = False) -> tuple[nnx.Module, ModelConfig]:
  """Builds the NNX model of a Hugging Face BERT / GPT-2 / T5 folder; returns (model, cfg)."""
  folder, hf, model_type, tensors, cfg = _read_folder(path, head)
  head = cfg.head
  cfg = cfg.replace(scan_layers=scan_layers,
                    **({"dtype": jnp.dtype(dtype).name} if dtype is not None else {}))
  scaled = model_type == "t5" and conv.t5_lm_head(hf, tensors) == "scaled"
  # Shapes only: initialising every weight just to overwrite it costs many small compiles.
  loop_cfg = cfg.replace(scan_layers=False)  # set_params takes the loop layout and stacks it
  params = flatten(get_params(nnx.eval_shape(lambda: build_model(loop_cfg, 0))))
  used, fresh, fresh_paths, missing = set(), [], [], []
  for ours, keys, kind in conv.entries(model_type, cfg, "Ts" if scaled else "T"):
    keys = keys if isinstance(keys, tuple) else (keys,)
    if kind == "0":
      params[ours] = np.zeros(params[ours].shape, np.float32)
      continue
    found = next((k for k in keys if k in tensors), None)
    if found is None:
      if ours[0] in conv.HEAD_PARAMS:
        fresh.append(keys[0])
        fresh_paths.append(ours)
      else:
        missing.append(keys[0])
      continue
    used.add(found)
    value = _to_ours(tensors[found], kind, cfg)
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
  used |= _tied_copies(model_type, cfg, tensors, used, folder)
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
  set_params(model, unflatten(params))
  return model, cfg


def save(model: nnx.Module, cfg: ModelConfig, path: str | Path) -> None:
  """Writes config.json and model.safetensors that transformers loads with the same outputs."""
  model_type, hf = conv.config_to_hf(cfg)
  arch = hf["architectures"][0]
  params = flatten(get_params(model))
  tensors: dict[str, np.ndarray] = {}
  fused: dict[str, dict[str, np.ndarray]] = {}
  for ours, keys, kind in conv.entries(model_type, cfg):
    key = keys[0] if isinstance(keys, tuple) else keys
    value = np.asarray(params[ours], np.float32)
    if kind == "0":
      if np.any(value != 0):
        raise ValueError(f"Cannot save as {arch}: its classifier has no bias, but "
                         f"{'.'.join(map(str, ours))} is non-zero; fine-tune without it or save "
                         "a native checkpoint.")
      continue
    if kind in ("q", "k", "v"):
      fused.setdefault(key, {})[kind] = value
      continue
    tensors[key] = value.T if kind == "T" else value
  for key, parts in fused.items():
    tensors[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=-1)
  if model_type == "bert":
    if not cfg.type_vocab_size:
      tensors["bert.embeddings.token_type_embeddings.weight"] = np.zeros((1, cfg.d_model),
                                                                         np.float32)
    if cfg.head in ("lm", "token_classification"):
      # These HF classes are built without a pooler; extra keys would only warn on load.
      tensors = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
    elif not cfg.pooler:
      warnings.warn("transformers' BertModel always has a pooler; this model has none, so "
                    "transformers will initialise it freshly (hidden states are unaffected).",
                    stacklevel=2)
  if arch == "T5Model":
    tensors.pop("lm_head.weight", None)  # T5Model has no LM head
  if arch in ("BertModel", "GPT2Model"):
    # A base model saved alone carries no 'bert.' / 'transformer.' prefix.
    prefix = conv.PREFIX[model_type][0]
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
  folder = Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(folder / "model.safetensors"), metadata={"format": "pt"})
