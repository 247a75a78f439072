"""Token classification (POS tags, BIO/IOB2 named entities): fine-tune a pretrained body.

Command (after pretraining configs/bert_tiny.py into runs/bert_tiny):
  python -m lm_research.main --config=configs/finetune_tagging.py --workdir=runs/brown_pos
Defaults: Brown corpus part-of-speech tags (data/brown_pos: 12,000 training sentences and the
5,642-sentence test split), the tiny encoder pretrained on the bundled corpus. The tag sits
on each word's first piece; predictions map back to words. Other data and bodies:
  --config.init_from=PATH/TO/bert-base-cased (a Hugging Face folder, or a native workdir)
  --config.data.train_path=train.conll --config.data.eval_path=dev.conll  (token<TAB>tag)
  --config.data.source=conll2003  (TFDS catalog; NER tags, entity-level F1 as seqeval counts)
``:decoder`` starts from the tiny GPT (runs/gpt_tiny).
"""

from configs import base


def get_config(arg: str = ""):
  """Tagging fine-tuning; ``arg``: '' (encoder body) or 'decoder'."""
  if arg not in ("", "decoder"):
    raise ValueError(f"configs/finetune_tagging.py:{arg} is not '' or 'decoder'")
  c = base.get_base()
  c.objective = "tagging"
  c.init_from = "runs/gpt_tiny" if arg == "decoder" else "runs/bert_tiny"
  # Replaced by init_from's architecture; used as is only when init_from is ''.
  c.model = base.model_block(
      family="decoder" if arg == "decoder" else "encoder", vocab_size=4096, d_model=128,
      num_layers=2, num_heads=2, d_ff=512, max_len=128, type_vocab_size=0 if arg else 2,
      dropout_rate=0.1)
  c.data.source = "files"
  c.data.kind = "tagging"
  c.data.train_path = "data/brown_pos/train.tsv"
  c.data.eval_path = "data/brown_pos/test.tsv"
  # The Brown test split has 12 rare tags (15 words) that no training sentence shows; they are
  # scored as errors instead of stopping the run ('error' is the default elsewhere).
  c.data.unseen_eval_labels = "count_wrong"
  c.train.seq_len = 128
  c.train.batch_size = 32
  c.train.epochs = 3.0
  c.train.learning_rate = 0.0  # auto: 3e-4 for the tiny body, 5e-5 for BERT-base (d_model 768)
  c.train.warmup_ratio = 0.1
  c.train.log_every_steps = 50
  c.eval.every_steps = 500
  c.eval.steps = 0  # the whole eval set
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 1
  return c
