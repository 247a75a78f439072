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
  c = base.finetune("tagging", "tagging", arg or "encoder", "data/brown_pos/train.tsv",
                    "data/brown_pos/test.tsv")
  # The Brown test split has 12 rare tags (15 words) that no training sentence shows; they are
  # scored as errors instead of stopping the run ('error' is the default elsewhere).
  c.data.unseen_eval_labels = "count_wrong"
  c.train.log_every_steps = 50
  c.eval.every_steps = 500
  c.checkpoint.every_steps = 500
  return c
