"""GPT tiny: a 4-layer, 128-wide GPT-2-style decoder trained as a causal LM.

Command:
  python -m lm_research.main --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny
Variant ``configs/gpt_tiny.py:llama`` swaps in RoPE, RMSNorm, SwiGLU, grouped-query attention
and an untied head. Sized to train in minutes on a laptop CPU.
"""

from configs import base


def get_config(arg: str = ""):
  """GPT-tiny; ``arg='llama'`` selects the LLaMA-style block."""
  c = base.get_base()
  c.objective = "causal_lm"
  c.model = base.model_block(
      family="decoder", vocab_size=8192, d_model=128, num_layers=4, num_heads=4, d_ff=512,
      max_len=256, activation="gelu_tanh", norm_eps=1e-5, dropout_rate=0.0, head="lm")
  if arg == "llama":
    c.model.update(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
                   num_kv_heads=2, use_bias=False, tie_embeddings=False, d_ff=352)
  elif arg:
    raise ValueError(f"configs/gpt_tiny.py takes '' or 'llama', got {arg!r}.")
  c.train.seq_len = 128
  # The bundled public-domain Shakespeare corpus; the tokenizer is trained on it on first use.
  c.data.source = "files"
  c.data.train_path = "data/shakespeare/train"
  c.data.eval_path = "data/shakespeare/eval"
  c.train.batch_size = 16
  c.train.learning_rate = 2e-3
  return c
