"""BERT tiny: a 2-layer, 128-wide encoder pretrained with masked LM + next-sentence prediction.

Command:
  python -m lm_research.main --config=configs/bert_tiny.py --workdir=runs/bert_tiny
Sized to train in minutes on a laptop CPU.
"""

from configs import base


def get_config(arg: str = ""):
  """BERT-tiny pretraining; ``arg`` is unused."""
  del arg
  c = base.get_base()
  c.objective = "mlm_nsp"
  c.model = base.model_block(
      family="encoder", vocab_size=8192, d_model=128, num_layers=2, num_heads=2, d_ff=512,
      max_len=128, type_vocab_size=2, pre_norm=False, norm_eps=1e-12, activation="gelu",
      pooler=True, head="pretraining", dropout_rate=0.1)
  c.train.seq_len = 128
  # The bundled public-domain Shakespeare corpus; the tokenizer is trained on it on first use.
  c.data.source = "files"
  c.data.train_path = "data/shakespeare/train"
  c.data.eval_path = "data/shakespeare/eval"
  c.train.batch_size = 32
  c.train.learning_rate = 1e-3
  return c
