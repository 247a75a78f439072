"""Sequence-to-sequence (T5): fine-tune a pretrained encoder-decoder on (input, target) pairs.

Command (after pretraining configs/t5_tiny.py into runs/t5_tiny):
  python -m lm_research.main --config=configs/finetune_seq2seq.py --workdir=runs/spam_t5
Default task: the bundled SpamAssassin e-mails read as text-to-text (input = the e-mail,
target = 'spam' or 'ham'), so exact match is the accuracy. Any other text-to-text data:
  --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl  ({"input","target"})
  --config.data.source=wmt14_translate/de-en  or  cnn_dailymail  (TFDS catalog)
  --config.init_from=PATH/TO/t5-small (a Hugging Face folder) --config.train.target_len=64
Evaluation decodes greedily (eval.max_new_tokens) and reports exact match, BLEU and ROUGE-L.
"""

from configs import base, t5_tiny


def get_config(arg: str = ""):
  """Seq2seq fine-tuning; ``arg`` is unused."""
  del arg
  c = base.get_base()
  c.objective = "seq2seq"
  c.init_from = "runs/t5_tiny"
  c.model = t5_tiny.get_config().model  # replaced by init_from's; used as is when it is ''
  c.data.source = "files"
  c.data.kind = "seq2seq"
  c.data.train_path = "data/spamassassin/train.jsonl"
  c.data.eval_path = "data/spamassassin/test.jsonl"
  c.train.seq_len = 256  # encoder input tokens
  c.train.target_len = 8  # decoder tokens (the target and its EOS)
  c.train.batch_size = 32
  c.train.epochs = 3.0
  c.train.learning_rate = 1e-3
  c.train.warmup_ratio = 0.1
  c.train.log_every_steps = 20
  c.eval.every_steps = 200
  c.eval.steps = 0  # the whole eval set
  c.eval.max_new_tokens = 8
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 1
  return c
