"""Grid: learning rate x depth of gpt_tiny on the bundled Shakespeare corpus (4 short runs).

Command:
  python -m launch.sweep --config=configs/gpt_tiny.py --sweep=configs/sweeps/gpt_tiny_grid.py \
      --parallel=2
Runs land in runs/sweeps/gpt_tiny_grid/<learning_rate=...,num_layers=...>/, all in the W&B group
gpt_tiny_grid; the table is runs/sweeps/gpt_tiny_grid/summary.md, the plot comparison.png.
Measured on a 2-core CPU with --parallel=2 (2026-11-29, 4096-piece tokenizer): 1 min 29 s for
the sweep, about 40 s a run (tokenizer and data preparation included). Expect eval/loss near
6.3 after 60 steps, all four within 0.04 of each other: 2 layers ahead of 1 (6.29-6.30 vs
6.32-6.33), the learning rate barely mattering at this budget. Raise train.steps to separate them.
"""


def get_sweep():
  """4 runs: train.learning_rate in {1e-3, 3e-3} x model.num_layers in {1, 2}."""
  return {
      "method": "grid",
      "parameters": {
          "train.learning_rate": [1e-3, 3e-3],
          "model.num_layers": [1, 2],
      },
      # Shrunk so the whole sweep is a couple of minutes on a CPU.
      "fixed": {
          "train.steps": 60,
          "train.seq_len": 64,
          "train.batch_size": 8,
          "eval.every_steps": 30,
          "checkpoint.every_steps": 30,
      },
      "metric": {"name": "eval/loss", "goal": "minimize"},
  }
