"""BERT-base (Devlin et al., 2018): 12 layers, 768 wide, 12 heads, 110M parameters.

Command (pretraining on Wikipedia + books needs an accelerator pod):
  python -m lm_research.main --config=configs/bert_base.py --workdir=runs/bert_base
Published recipe: batch 256 x 512 tokens, 1M steps, AdamW lr 1e-4, 10k warmup, linear decay.
"""

from configs import base


def get_config(arg: str = ""):
  """BERT-base with the MLM + NSP pretraining heads; ``arg`` is unused."""
  del arg
  c = base.get_base()
  c.objective = "mlm_nsp"
  c.model = base.model_block(
      family="encoder", vocab_size=30522, d_model=768, num_layers=12, num_heads=12, d_ff=3072,
      max_len=512, type_vocab_size=2, pre_norm=False, norm_eps=1e-12, activation="gelu",
      pooler=True, head="pretraining", dropout_rate=0.1)
  c.train.seq_len = 512
  c.train.batch_size = 256
  c.train.steps = 1_000_000
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 10_000
  c.train.b2 = 0.999
  c.train.eps = 1e-6
  # BERT's Wikipedia half (TFDS has no BookCorpus; add your own books with data.source=files)
  c.data.source = "wikipedia/20230601.en"
  return c
