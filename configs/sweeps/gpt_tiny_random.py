"""Seeded random search over gpt_tiny's optimiser settings (6 short runs on synthetic data).

Command:
  python -m launch.sweep --config=configs/gpt_tiny.py --sweep=configs/sweeps/gpt_tiny_random.py
The same seed draws the same 6 runs every time (values rounded to 4 significant digits), so a
rerun skips the finished ones. Synthetic tokens are random, so this sweep shows the machinery
(and throughput per setting), not which learning rate models language best: for that, drop
data.source and raise train.steps. Measured on a 2-core CPU with --parallel=2: 1 min 19 s for
the 6 runs; eval/loss stays at ln(4096) = 8.32-8.41 (uniform tokens cannot be learned), and
the two largest learning rates end highest (8.38, 8.41).
Export it for W&B agents:
  python -m launch.sweep --config=configs/gpt_tiny.py --sweep=configs/sweeps/gpt_tiny_random.py \
      --export_wandb=runs/sweeps/gpt_tiny_random.yaml
"""


def get_sweep():
  """6 draws of learning rate (log-uniform), warmup (integer) and schedule (choice)."""
  return {
      "method": "random",
      "num_runs": 6,
      "seed": 0,
      "parameters": {
          "train.learning_rate": {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2},
          "train.warmup_steps": {"distribution": "int_uniform", "min": 0, "max": 10},
          "train.schedule": ["linear", "cosine"],
      },
      "fixed": {
          "data.source": "synthetic",
          "train.steps": 30,
          "train.seq_len": 64,
          "eval.every_steps": 15,
          "checkpoint.every_steps": 15,
      },
      "metric": {"name": "eval/loss", "goal": "minimize"},
  }
