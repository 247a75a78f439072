"""Export a run's latest weights as a Hugging Face folder, LoRA adapters merged into them, or
its trained adapters (and task head) alone.

  python -m lm_research.export --workdir=runs/qwen_lora --out=qwen_lora_merged/
  python -m lm_research.export --workdir=runs/qwen_lora --out=qwen_lora_adapters/ --adapters_only

The merged folder holds config.json, safetensors weights (interop/hf.py) and the run's tokenizer
files, so transformers and ``hf.load`` read it as any checkpoint. ``--adapters_only`` writes
adapters.safetensors (our parameter names, loop layout) and adapter_config.json (rank, alpha,
targets, the base they adapt): megabytes where the model takes gigabytes.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from lm_research import paths


def define_flags() -> None:
  """Defines this command's flags, only when it runs: tests import this module beside
  lm_research.main, whose --workdir would clash."""
  flags.DEFINE_string("workdir", None, "A training run's directory (its config.json and latest "
                      "checkpoint).")
  flags.DEFINE_string("out", None, "The folder to write (new or empty).")
  flags.DEFINE_string("model_type", None, "The Hugging Face model type to write (e.g. mistral); "
                      "default: the one the architecture implies.")
  flags.DEFINE_bool("adapters_only", False, "Write the trained adapters and task head only, "
                    "unmerged.")


# A Hugging Face folder's tokenizer files, copied next to the exported weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "generation_config.json", "chat_template.jinja", "chat_template.json")


def trained_model(workdir: str, check=None):
  """(model, experiment) of a run's latest weights (the moving average, if it kept one);
  ``check(experiment)`` may refuse the run before its weights are read."""
  import ml_collections  # noqa: PLC0415  (JAX-heavy imports only once flags are valid)
  from flax import nnx  # noqa: PLC0415
  from lm_research import checkpointing, experiment, sharding, train  # noqa: PLC0415
  from lm_research.optim import inference_params, make_optimizer  # noqa: PLC0415
  path = paths.as_path(workdir) / "config.json"
  if not path.is_file():
    raise ValueError(f"--workdir={workdir!r} has no config.json; train there first")
  exp = experiment.make_experiment(ml_collections.ConfigDict(json.loads(path.read_text())), None,
                                   workdir)
  if check is not None:
    check(exp)
  tx, _ = make_optimizer(exp.optim_cfg)
  ckpt = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    with sharding.active_mesh(exp.mesh):
      graphdef, state, _, _ = train.trained_state(exp, tx, ckpt)
  finally:
    ckpt.close()
  return nnx.merge(graphdef, inference_params(state.params, state.opt_state)), exp


def _copy_tokenizer(tokenizer_path: str, out: str) -> list[str]:
  """Copies the run's tokenizer (a folder's tokenizer files, or one file; local or in a remote
  workdir) into ``out``."""
  if not tokenizer_path:
    return []
  where = paths.as_path(tokenizer_path)
  if where.is_dir():
    sources = [where / n for n in TOKENIZER_FILES if (where / n).is_file()]
  else:
    sources = [where] if where.is_file() else []
  for source in sources:
    paths.write_bytes(os.path.join(out, source.name), source.read_bytes())
  return [s.name for s in sources]


def write_adapters(model, base: str, out: str) -> int:
  """adapters.safetensors + adapter_config.json of ``model``'s trained parameters; returns
  how many tensors were written."""
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from safetensors.numpy import save_file  # noqa: PLC0415
  from lm_research.models import lora  # noqa: PLC0415
  from lm_research.models.layout import flatten, unstack_layers  # noqa: PLC0415
  cfg = model.cfg.lora
  if not cfg.rank:
    raise ValueError("this run has no adapters (train.lora.rank=0); export the whole model "
                     "without --adapters_only")
  trained, _ = lora.split(nnx.state(model, nnx.Param), lora.is_trainable)
  params = nnx.to_pure_dict(trained)
  params = unstack_layers(params) if model.cfg.scan_layers else params
  tensors = {".".join(map(str, k)): np.asarray(v, np.float32) for k, v in flatten(params).items()}
  os.makedirs(out, exist_ok=True)
  save_file(tensors, os.path.join(out, "adapters.safetensors"))
  with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump(dict(rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets, base=base), f, indent=2)
  return len(tensors)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not (flags.FLAGS.workdir and flags.FLAGS.out):
    raise app.UsageError("give --workdir (a trained run) and --out (the folder to write)")
  logging.set_verbosity(logging.WARNING)  # Orbax's restore chatter; the result is printed
  try:
    model, exp = trained_model(flags.FLAGS.workdir)
    if flags.FLAGS.adapters_only:
      count = write_adapters(model, exp.config.init_from, flags.FLAGS.out)
      print(f"wrote {count} adapter tensors to {flags.FLAGS.out}")
      return
    from lm_research.interop import hf  # noqa: PLC0415
    hf.save(model, model.cfg, flags.FLAGS.out, model_type=flags.FLAGS.model_type)
    copied = _copy_tokenizer(exp.config.data.tokenizer_path, flags.FLAGS.out)
    print(f"wrote {flags.FLAGS.out} (adapters merged: {bool(model.cfg.lora.rank)}; tokenizer: "
          f"{', '.join(copied) or 'none'})")
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  define_flags()
  app.run(main)
