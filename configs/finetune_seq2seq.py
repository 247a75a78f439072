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

from configs import base


def get_config(arg: str = ""):
  """Seq2seq fine-tuning; ``arg`` is unused."""
  del arg
  c = base.finetune("seq2seq", "seq2seq", "encoder_decoder", "data/spamassassin/train.jsonl",
                    "data/spamassassin/test.jsonl")
  c.train.seq_len = 256  # encoder input tokens
  c.train.target_len = 8  # decoder tokens (the target and its EOS)
  c.train.learning_rate = 1e-3
  c.eval.max_new_tokens = 8
  return c
