"""T5-base (Raffel et al., 2019): 12+12 layers, 768 wide, 12 heads, 220M parameters.

Command (C4 pretraining needs an accelerator pod):
  python -m lm_research.main --config=configs/t5_base.py --workdir=runs/t5_base
Variant ``configs/t5_base.py:v1_1``: gated-GELU MLP (d_ff 2048), untied head (248M).
Published recipe: Adafactor, inverse-sqrt schedule, batch 128 x 512 tokens.
"""

from configs import base


def get_config(arg: str = ""):
  """T5-base; ``arg='v1_1'`` selects the T5 1.1 block."""
  c = base.get_base()
  c.objective = "span_corruption"
  c.model = base.model_block(
      family="encoder_decoder", vocab_size=32128, d_model=768, num_layers=12,
      num_decoder_layers=12, num_heads=12, head_dim=64, d_ff=3072, position="relative",
      norm="rmsnorm", norm_eps=1e-6, activation="relu", use_bias=False, attention_scale=1.0,
      initializer_range=0.05, dropout_rate=0.1, head="lm", scan_layers=True)
  if arg == "v1_1":
    c.model.update(activation="gelu_tanh", gated_mlp=True, tie_embeddings=False, d_ff=2048,
                   dropout_rate=0.0)
  elif arg:
    raise ValueError(f"configs/t5_base.py takes '' or 'v1_1', got {arg!r}.")
  c.train.seq_len = 512
  c.train.batch_size = 128
  c.train.steps = 524_288
  c.train.optimizer = "adafactor"
  c.train.schedule = "inverse_sqrt"
  c.train.learning_rate = 1e-2
  c.train.warmup_steps = 10_000
  c.train.weight_decay = 0.0
  c.data.source = "c4/en"  # C4, as T5 was
  return c
