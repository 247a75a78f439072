"""Sequence classification: fine-tune a pretrained body on (text[, text_b], label) examples.

Command (after pretraining configs/bert_tiny.py into runs/bert_tiny):
  python -m lm_research.main --config=configs/finetune_classification.py --workdir=runs/spam
Defaults: the bundled SpamAssassin e-mails (data/spamassassin; spam vs ham), the tiny encoder
pretrained on the bundled corpus. Any other data and body:
  --config.init_from=PATH/TO/bert-base-uncased (a Hugging Face folder, or a native workdir)
  --config.data.train_path=train.tsv --config.data.eval_path=test.tsv  (DESIGN.md formats)
  --config.data.source=glue/sst2  (a TFDS catalog dataset; data.train_path unused)
``:decoder`` starts from the tiny GPT (runs/gpt_tiny) and classifies at the last token.
The body's architecture and tokenizer come from init_from; the labels from the training data.
"""

from configs import base


def get_config(arg: str = ""):
  """Classification fine-tuning; ``arg``: '' (encoder body) or 'decoder'."""
  if arg not in ("", "decoder"):
    raise ValueError(f"configs/finetune_classification.py:{arg} is not '' or 'decoder'")
  c = base.get_base()
  c.objective = "classification"
  c.init_from = "runs/gpt_tiny" if arg == "decoder" else "runs/bert_tiny"
  # Replaced by init_from's architecture; used as is only when init_from is ''.
  c.model = base.model_block(
      family="decoder" if arg == "decoder" else "encoder", vocab_size=4096, d_model=128,
      num_layers=2, num_heads=2, d_ff=512, max_len=128, pooler=arg != "decoder",
      type_vocab_size=0 if arg == "decoder" else 2, dropout_rate=0.1)
  c.data.source = "files"
  c.data.kind = "classification"
  c.data.train_path = "data/spamassassin/train.jsonl"
  c.data.eval_path = "data/spamassassin/test.jsonl"
  c.train.seq_len = 128
  c.train.batch_size = 32
  c.train.epochs = 3.0  # train.steps follows from the training set's size
  c.train.learning_rate = 0.0  # auto: 3e-4 for the tiny body, 5e-5 for BERT-base (d_model 768)
  c.train.warmup_ratio = 0.1
  c.train.log_every_steps = 20
  c.eval.every_steps = 200
  c.eval.steps = 0  # the whole eval set
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 1
  return c
