"""An experiment's parts: typed config, mesh, sharded train state, jitted steps, data, eval.

Read top to bottom: Config -> Mesh -> Model + optimizer state (created sharded) -> Steps (jit)
-> Data -> Eval. ``lm_research.train`` runs the loop over these.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lm_research import sharding, steps
from lm_research.data.synthetic import SyntheticSource, span_target_length
from lm_research.models import ModelConfig, build_model
from lm_research.objectives.registry import get_objective
from lm_research.optim import OptimConfig, make_optimizer


@dataclasses.dataclass
class Experiment:
  """Typed pieces of a config, validated before anything is compiled."""

  config: ml_collections.ConfigDict
  model_cfg: ModelConfig
  optim_cfg: OptimConfig
  step_cfg: steps.StepConfig
  mesh: jax.sharding.Mesh
  objective: Any

  @property
  def target_len(self) -> int:
    """Decoder length for encoder-decoder batches (T5's 512 -> 114 rule), else 0."""
    return span_target_length(self.config.train.seq_len) if self.model_cfg.family == \
        "encoder_decoder" else 0


def make_experiment(config: ml_collections.ConfigDict,
                    devices: list | None = None) -> Experiment:
  """Turns the config into typed parts and checks mesh, batch and model fit together."""
  model_cfg = ModelConfig.from_dict(config.model)
  objective = get_objective(config.objective)
  if objective.family != model_cfg.family:
    raise ValueError(f"objective={config.objective!r} trains a {objective.family} model but "
                     f"model.family={model_cfg.family!r}; pick a matching config.")
  if config.train.on_nan not in ("stop", "skip"):
    raise ValueError(f"train.on_nan={config.train.on_nan!r} is not one of stop, skip.")
  if model_cfg.position == "learned" and config.train.seq_len > model_cfg.max_len:
    raise ValueError(f"train.seq_len={config.train.seq_len} exceeds model.max_len="
                     f"{model_cfg.max_len}; lower the one or raise the other.")
  mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh), devices)
  sharding.check_divisibility(mesh, global_batch_size=config.train.batch_size,
                              grad_accum_steps=config.train.grad_accum_steps,
                              model_cfg=model_cfg)
  return Experiment(
      config=config, model_cfg=model_cfg, optim_cfg=OptimConfig.from_train_config(config.train),
      step_cfg=steps.StepConfig(grad_accum_steps=config.train.grad_accum_steps,
                                z_loss=config.train.z_loss),
      mesh=mesh, objective=objective)


def state_layout(exp: Experiment, tx):
  """(graphdef, abstract state with shardings, state shardings, jitted sharded init)."""
  seed = exp.config.seed
  abstract_model = nnx.eval_shape(lambda: build_model(exp.model_cfg, seed))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(exp.mesh, abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = sharding.matching_shardings(exp.mesh, abstract_opt, abstract_params, param_sh)
  replicated = NamedSharding(exp.mesh, P())
  state_sh = steps.TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                              rng=replicated)

  @functools.partial(jax.jit, out_shardings=state_sh)
  def init():
    params = nnx.state(build_model(exp.model_cfg, seed))
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params),
                            rng=jax.random.fold_in(jax.random.key(seed), 1))

  abstract_state = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      jax.eval_shape(init), state_sh)
  return graphdef, abstract_state, state_sh, init


def create_train_state(exp: Experiment, tx) -> tuple[nnx.GraphDef, steps.TrainState, Any]:
  """Initialises parameters and optimizer state directly sharded on the mesh."""
  graphdef, _, state_sh, init = state_layout(exp, tx)
  return graphdef, init(), state_sh


def compile_steps(exp: Experiment, graphdef, state_sh, tx, schedule):
  """The jitted train step (state donated) and eval step, with explicit shardings."""
  replicated = NamedSharding(exp.mesh, P())
  train_fn = functools.partial(steps.train_step, graphdef, objective=exp.objective, tx=tx,
                               schedule=schedule, cfg=exp.step_cfg)
  train = jax.jit(train_fn, in_shardings=(state_sh, None), out_shardings=(state_sh, replicated),
                  donate_argnums=(0,))
  eval_fn = functools.partial(steps.eval_step, graphdef, objective=exp.objective)
  evaluate = jax.jit(eval_fn, in_shardings=(state_sh.params, None),
                     out_shardings=replicated)
  return train, evaluate


def make_batches(exp: Experiment, split: str) -> Iterator[dict]:
  """This process's host batches for ``split`` ('train' endless, 'eval' a fixed set)."""
  c = exp.config
  if c.data.source != "synthetic":
    raise ValueError(f"data.source={c.data.source!r} is not available yet; use 'synthetic'.")
  seed = c.seed if split == "train" else c.seed + 1_000_003
  return SyntheticSource(
      c.objective, seed=seed, batch_size=c.train.batch_size, seq_len=c.train.seq_len,
      vocab_size=exp.model_cfg.vocab_size, process_index=jax.process_index(),
      process_count=jax.process_count())


def run_eval(exp: Experiment, evaluate, params) -> dict[str, float]:
  """Averages every metric over ``eval.steps`` eval batches (sums of numerators/denominators)."""
  nums: dict = {}
  dens: dict = {}
  batches = make_batches(exp, "eval")
  for _ in range(exp.config.eval.steps):
    batch = sharding.global_batch(exp.mesh, next(batches))
    n, d = jax.device_get(evaluate(params, batch))
    nums = {k: nums.get(k, 0.0) + float(v) for k, v in n.items()}
    dens = {k: dens.get(k, 0.0) + float(v) for k, v in d.items()}
  ratios = exp.objective.ratios(nums, dens)
  return {f"eval/{k}": float(v) for k, v in ratios.items()}


