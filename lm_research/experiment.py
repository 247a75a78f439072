"""An experiment's parts: typed config, mesh, sharded train state, jitted steps, data, eval.

Read top to bottom: Config -> Mesh -> Model + optimizer state (created sharded) -> Steps (jit)
-> Data -> Eval. ``lm_research.train`` runs the loop over these.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lm_research import metrics, sharding, steps
from lm_research.data import inputs, length_buckets
from lm_research.models import ModelConfig, build_model, lora
from lm_research.objectives.registry import get_objective
from lm_research.optim import OptimConfig
from lm_research.tasks import examples as task_examples
from lm_research.tasks import setup as task_setup
from lm_research.tasks.registry import Task, task_of


# train.seq_len=0 never picks more (a 32k-position model would otherwise have every training
# row built 32k wide just to measure it); set train.seq_len for longer rows.
AUTO_SEQ_LEN_CAP = 4096


@dataclasses.dataclass
class Experiment:
  """Typed pieces of a config, validated before anything is compiled."""

  config: ml_collections.ConfigDict
  model_cfg: ModelConfig
  optim_cfg: OptimConfig
  step_cfg: steps.StepConfig
  mesh: jax.sharding.Mesh
  objective: Any
  workdir: str = ""
  tokenizer: Any = None  # None for synthetic data
  labels: list[str] | None = None  # class or tag names in id order (classification, tagging)
  open_split: inputs.DataSources | None = None  # the run's data splits, each opened once

  @property
  def target_len(self) -> int:
    """Decoder length for encoder-decoder batches (train.target_len, or the objective's), else 0."""
    if self.model_cfg.family != "encoder_decoder":
      return 0
    return self.config.train.target_len or self.objective.decoder_length(self.config.train.seq_len)

  @property
  def mlm_positions(self) -> int | None:
    """Rows of MLM logits per example when the objective predicts only at masked positions."""
    if self.objective.predictions_per_row is None:
      return None
    return self.objective.predictions_per_row(self.config.data, self.config.train.seq_len)

  def train_flops_per_example(self) -> float:
    """Model FLOPs of one training example (forward + backward) at the configured lengths."""
    return metrics.train_flops_per_example(self.model_cfg, self.config.train.seq_len,
                                           self.target_len, self.mlm_positions)

  @property
  def task(self) -> Task | None:
    """The fine-tuning task (tasks/registry.py), or None when pretraining."""
    return task_of(self.config)


def make_experiment(config: ml_collections.ConfigDict, devices: list | None = None,
                    workdir: str = "") -> Experiment:
  """Turns the config into typed parts and checks mesh, batch and model fit together; then
  gets (or trains) the tokenizer for real data.

  The caller's config is left as it is: a fine-tuning config is completed on a copy
  (tasks/setup.py: pretrained body and tokenizer, labels, steps from epochs), and
  ``Experiment.config`` is that resolved copy, the one config.json records.
  """
  requested_steps = config.train.steps
  config = copy.deepcopy(config)
  if config.data.truncation not in task_examples.TRUNCATIONS:
    raise ValueError(f"data.truncation={config.data.truncation!r} is not one of "
                     f"{', '.join(task_examples.TRUNCATIONS)}.")
  open_split = inputs.DataSources(config.data, workdir)
  labels = task_setup.prepare(config, workdir, open_split)
  model_cfg = ModelConfig.from_dict(config.model).replace(
      lora=lora.LoRAConfig(**config.train.lora))
  objective = get_objective(config.objective)
  if model_cfg.family not in objective.families:
    raise ValueError(f"objective={config.objective!r} trains {' or '.join(objective.families)} "
                     f"models but "
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
  if config.train.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={config.train.batch_size} does not split over "
                     f"{jax.process_count()} processes; make it a multiple of the process count.")
  if config.eval.every_steps and config.eval.steps < (0 if task_of(config) else 1):
    raise ValueError("eval.steps must be at least 1 (0 = the whole eval set, fine-tuning only) "
                     "when eval.every_steps is set.")
  if config.train.seq_len == 0 and (task_of(config) is None or config.data.source == "synthetic"):
    raise ValueError("train.seq_len=0 (chosen from the data) is for fine-tuning on real data; "
                     "set --config.train.seq_len to a length.")
  if config.data.pack_examples and (task_of(config) is None or not config.data.length_buckets
                                    or config.data.source == "synthetic"):
    raise ValueError("data.pack_examples packs fine-tuning examples on real data and needs "
                     "data.length_buckets > 0; set --config.data.pack_examples=False.")
  trainable = lora.trainable_filter(model_cfg)  # None: every parameter trains
  tokenizer = None
  if config.data.source != "synthetic":
    tokenizer = inputs.get_tokenizer(config, model_cfg.family, workdir, open_split)
  exp = Experiment(
      config=config, model_cfg=model_cfg,
      optim_cfg=OptimConfig.from_train_config(config.train, trainable=trainable),
      step_cfg=steps.StepConfig(grad_accum_steps=config.train.grad_accum_steps,
                                z_loss=config.train.z_loss, trainable=trainable),
      mesh=mesh, objective=objective, workdir=workdir, tokenizer=tokenizer, labels=labels,
      open_split=open_split)
  if config.train.seq_len == 0:
    _choose_seq_len(exp)
  if config.data.pack_examples and requested_steps <= 0 < config.train.epochs:
    _steps_over_packed_rows(exp)
  return exp


def _steps_over_packed_rows(exp: Experiment) -> None:
  """data.pack_examples with train.epochs: steps count packed rows (several examples each)."""
  train = exp.config.train
  rows = exp.open_split.rows("train", task_rows(exp), train.seq_len,
                             exp.config.data.length_buckets, inputs.bucket_multiple(exp.config),
                             pack=True)
  train.steps = max(1, math.ceil(train.epochs * len(rows) / train.batch_size))
  if train.warmup_ratio > 0:
    train.warmup_steps = int(train.warmup_ratio * train.steps)
  exp.optim_cfg = OptimConfig.from_train_config(train)
  logging.info("train.epochs=%g over %d packed rows at batch %d: train.steps=%d", train.epochs,
               len(rows), train.batch_size, train.steps)


def _choose_seq_len(exp: Experiment) -> None:
  """train.seq_len=0: the length that holds 99% of the training rows (rounded up to 8), at
  most the model's positions and AUTO_SEQ_LEN_CAP; logged in one line."""
  train = exp.config.train
  train.seq_len = min(exp.model_cfg.max_len, AUTO_SEQ_LEN_CAP)
  chosen, lengths = length_buckets.fitting_length(exp.open_split("train"), task_rows(exp),
                                                  train.seq_len)
  logging.info("train.seq_len=0: %d tokens, which hold %d of %d training rows (99th "
               "percentile %d, longest %d; at most %d)", chosen,
               int((lengths <= chosen).sum()), len(lengths), np.percentile(lengths, 99),
               lengths.max(), train.seq_len)
  train.seq_len = chosen


def state_layout(exp: Experiment, tx):
  """(graphdef, abstract state with shardings, state shardings, jitted sharded init)."""
  seed = exp.config.seed
  abstract_model = nnx.eval_shape(lambda: build_model(exp.model_cfg, seed))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(exp.mesh, abstract_params, exp.model_cfg.kv_heads)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = sharding.matching_shardings(exp.mesh, abstract_opt, abstract_params, param_sh)
  replicated = NamedSharding(exp.mesh, P())
  state_sh = steps.TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                              rng=replicated)

  @functools.partial(jax.jit, out_shardings=state_sh)
  def init():
    params = lora.store_frozen(nnx.state(build_model(exp.model_cfg, seed)), exp.model_cfg)
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params),
                            rng=jax.random.fold_in(jax.random.key(seed), 1))

  abstract_state = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      jax.eval_shape(init), state_sh)
  lora.log_summary(abstract_state.params, abstract_state.opt_state, exp.step_cfg.trainable)
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


def task_rows(exp: Experiment):
  """The fine-tuning row builder of ``exp`` (tasks/examples.py), or None when pretraining."""
  return exp.task.rows(exp) if exp.task is not None else None


def make_batches(exp: Experiment, split: str) -> Iterator[dict]:
  """This process's host batches for ``split`` ('train' endless, 'eval' a fixed pass)."""
  return inputs.make_batches(exp.config, exp.model_cfg.family, split, exp.workdir,
                             exp.tokenizer, examples=task_rows(exp), open_split=exp.open_split)


def _loss_metrics(exp: Experiment, evaluate, params, batches) -> dict[str, float]:
  """Every objective metric, as sums of numerators over sums of denominators."""
  nums: dict = {}
  dens: dict = {}
  for host_batch in batches:
    batch = sharding.global_batch(exp.mesh, host_batch)
    n, d = jax.device_get(evaluate(params, batch))
    nums = {k: nums.get(k, 0.0) + float(v) for k, v in n.items()}
    dens = {k: dens.get(k, 0.0) + float(v) for k, v in d.items()}
  return {k: float(v) for k, v in exp.objective.ratios(nums, dens).items()}


def run_eval(exp: Experiment, evaluate, params, graphdef=None, step: int = 0) -> dict[str, float]:
  """Eval metrics: the objective's over ``eval.steps`` batches (pretraining), or the task's
  over the whole eval set (fine-tuning; ``eval.steps`` > 0 caps the batches)."""
  c = exp.config
  if exp.task is not None:
    metrics = exp.task.metrics(exp, graphdef, params, make_batches(exp, "eval"),
                               lambda batches: _loss_metrics(exp, evaluate, params, batches), step)
  else:
    metrics = _loss_metrics(exp, evaluate, params,
                            inputs.eval_batches(c, make_batches(exp, "eval"), c.eval.steps))
  return {f"eval/{k}": float(v) for k, v in metrics.items()}
