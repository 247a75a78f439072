"""A sweep file's ``get_sweep()`` spec -> the list of runs, their names, and a W&B sweep YAML.

A spec is a dict:
  {'method': 'grid',
   'parameters': {'train.learning_rate': [1e-3, 3e-3], 'model.num_layers': [2, 4]},
   'fixed': {'train.steps': 200}, 'metric': {'name': 'eval/loss', 'goal': 'minimize'}}
  {'method': 'random', 'num_runs': 6, 'seed': 0, 'parameters': {
       'train.learning_rate': {'distribution': 'log_uniform', 'min': 1e-4, 'max': 1e-2},
       'train.warmup_steps': {'distribution': 'int_uniform', 'min': 0, 'max': 50},
       'model.num_layers': [2, 4]}}            # a list is a uniform choice
Grid parameters are lists; random ones are lists or distributions ('uniform', 'log_uniform',
'int_uniform'). Sampled floats are rounded to 4 significant digits so that run names and
values agree and read well.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import os
import random
import re
from typing import Any

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
METHODS = ("grid", "random")
# W&B's names for ours ('log_uniform_values' takes the bounds themselves, not their logs).
_WANDB_DISTRIBUTIONS = {"uniform": "uniform", "log_uniform": "log_uniform_values",
                        "int_uniform": "int_uniform"}


def load_sweep(path: str) -> dict:
  """Imports a sweep file and returns its validated ``get_sweep()`` dict."""
  if not os.path.isfile(path):
    raise ValueError(f"--sweep={path} does not exist; give a file like configs/sweeps/NAME.py.")
  module_spec = importlib.util.spec_from_file_location("_sweep_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(); it must return the sweep dict.")
  spec = module.get_sweep()
  validate(spec, path)
  return spec


def validate(spec: Any, where: str = "the sweep") -> None:
  """Raises a one-line ValueError for anything expand() could not turn into runs."""
  if not isinstance(spec, dict):
    raise ValueError(f"{where}: get_sweep() must return a dict, got {type(spec).__name__}.")
  unknown = set(spec) - {"method", "parameters", "fixed", "num_runs", "seed", "metric", "name"}
  if unknown:
    raise ValueError(f"{where}: unknown sweep keys {sorted(unknown)}; use method, parameters, "
                     "fixed, num_runs, seed, metric, name.")
  method = spec.get("method")
  if method not in METHODS:
    raise ValueError(f"{where}: method={method!r} is not one of {', '.join(METHODS)}.")
  params = spec.get("parameters")
  if not isinstance(params, dict) or not params:
    raise ValueError(f"{where}: 'parameters' must be a non-empty dict of config key -> values.")
  if not isinstance(spec.get("fixed", {}), dict):
    raise ValueError(f"{where}: 'fixed' must be a dict of config key -> value.")
  for key, values in params.items():
    if key in spec.get("fixed", {}):
      raise ValueError(f"{where}: {key} is both swept and fixed; keep one.")
    if isinstance(values, (list, tuple)):
      if not values:
        raise ValueError(f"{where}: parameter {key} has no values.")
    elif method == "grid":
      raise ValueError(f"{where}: grid parameter {key} must be a list of values.")
    elif not isinstance(values, dict) or values.get("distribution") not in DISTRIBUTIONS:
      raise ValueError(f"{where}: parameter {key} must be a list or {{'distribution': one of "
                       f"{', '.join(DISTRIBUTIONS)}, 'min': ..., 'max': ...}}.")
    elif not values.get("min", math.nan) < values.get("max", math.nan):
      raise ValueError(f"{where}: parameter {key} needs numbers min < max.")
    elif values["distribution"] == "log_uniform" and values["min"] <= 0:
      raise ValueError(f"{where}: log_uniform parameter {key} needs min > 0.")
  if method == "random" and not (isinstance(spec.get("num_runs"), int) and spec["num_runs"] > 0):
    raise ValueError(f"{where}: a random sweep needs num_runs, a positive integer.")
  metric = spec.get("metric", {})
  if not isinstance(metric, dict) or metric.get("goal", "minimize") not in ("minimize",
                                                                              "maximize"):
    raise ValueError(f"{where}: metric must be {{'name': KEY, 'goal': 'minimize'|'maximize'}}.")


def expand(spec: dict) -> list[dict[str, Any]]:
  """The swept values of each run, in order: the grid's product, or ``num_runs`` seeded draws."""
  params = spec["parameters"]
  if spec["method"] == "grid":
    keys = list(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]
  rng = random.Random(spec.get("seed", 0))
  return [{key: _sample(rng, values) for key, values in params.items()}
          for _ in range(spec["num_runs"])]


def _sample(rng: random.Random, values) -> Any:
  """One draw of a random-search parameter."""
  if isinstance(values, (list, tuple)):
    return values[rng.randrange(len(values))]
  low, high = values["min"], values["max"]
  if values["distribution"] == "int_uniform":
    return rng.randint(int(low), int(high))
  if values["distribution"] == "log_uniform":
    return _round(math.exp(rng.uniform(math.log(low), math.log(high))))
  return _round(rng.uniform(low, high))


def _round(x: float) -> float:
  return float(f"{x:.4g}")


def format_value(value: Any) -> str:
  """A value as ml_collections parses it from ``--config.KEY=VALUE``."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def run_name(params: dict[str, Any]) -> str:
  """'learning_rate=0.003,num_layers=2': each swept key's last part (whole key if two clash)."""
  if not params:
    return "default"
  last = [key.split(".")[-1] for key in params]
  parts = []
  for key, short in zip(params, last):
    value = params[key]
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    parts.append(f"{short if last.count(short) == 1 else key}={text}")
  name = re.sub(r"[^A-Za-z0-9.=+,_-]", "-", ",".join(parts))
  if len(name) > 120:  # keep folder names usable; the hash keeps them distinct
    name = name[:110] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


def unique_names(all_params: list[dict[str, Any]]) -> list[str]:
  """run_name of each run; repeats (a random search drawing the same values) get -2, -3..."""
  names, seen = [], {}
  for params in all_params:
    name = run_name(params)
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
  return names


def metric_of(spec: dict) -> tuple[str, str]:
  """(metric key, 'minimize'|'maximize') that ranks runs; eval/loss by default."""
  metric = spec.get("metric", {})
  return metric.get("name", "eval/loss"), metric.get("goal", "minimize")


def wandb_sweep(spec: dict, name: str, config: str, sweep_file: str, workdir: str) -> dict:
  """The W&B sweep config: ``wandb sweep FILE.yaml`` then ``wandb agent ID`` runs our runs.

  Each agent run calls ``python -m launch.sweep --agent``, which gives it the same workdir
  (named from its parameters) a local run would have.
  """
  parameters: dict[str, Any] = {}
  for key, values in spec["parameters"].items():
    if isinstance(values, (list, tuple)):
      parameters[f"config.{key}"] = {"values": list(values)}
    else:
      parameters[f"config.{key}"] = {"distribution": _WANDB_DISTRIBUTIONS[values["distribution"]],
                                     "min": values["min"], "max": values["max"]}
  for key, value in spec.get("fixed", {}).items():
    parameters[f"config.{key}"] = {"value": value}
  metric, goal = metric_of(spec)
  out = {"name": name, "method": spec["method"], "metric": {"name": metric, "goal": goal},
         "parameters": parameters,
         "command": ["${env}", "${interpreter}", "-m", "launch.sweep", "--agent",
                     f"--config={config}", f"--sweep={sweep_file}", f"--workdir={workdir}",
                     "${args}"]}
  if spec["method"] == "random":
    out["run_cap"] = spec["num_runs"]
  return out
