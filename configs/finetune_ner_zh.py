"""Chinese named entities (PER/LOC/ORG, BIO, one character per CoNLL line) from the tiny
Chinese BERT.

Command (after `python -m lm_research.main --config=configs/bert_tiny.py:zh
--workdir=runs/bert_tiny_zh`):
  python -m lm_research.main --config=configs/finetune_ner_zh.py --workdir=runs/ner_zh
Data: data/chinese/ner (People's Daily, January 1998: 3,000 training and 800 test sentences
whose names are tagged nr/ns/nt in the corpus). Each character is a unit, encoded without an
invented space (data/units.py), its tag on its first piece. Predict on plain Chinese lines
gives one tag per character:
  ... --mode=predict --config.predict.input=lines.txt
Reports entity-level precision, recall and F1 (as seqeval counts) and token accuracy.
Measured (2-core CPU shared with other jobs, 2026-12-03; body: bert_tiny.py:zh, 600 steps,
rotary positions): 938 steps; entity F1 0.617 (precision 0.608, recall 0.626; 0.591 at step
500), token accuracy 97.1% (all-O 93.0%). The same recipe from the earlier learned-table body
scored 0.199, no better than from random weights (0.201): that body gave no notion of
neighbouring characters. Baselines (data/chinese/baselines.py): most frequent tag per
character 0.085, the training entities as a dictionary 0.671, a perceptron over character
windows 0.690. The labels come from part-of-speech tags (data/chinese).
"""

from configs import base

BODY = "runs/bert_tiny_zh"


def get_config(arg: str = ""):
  """Chinese NER fine-tuning of the tiny Chinese encoder; ``arg`` is unused."""
  if arg:
    raise ValueError(f"configs/finetune_ner_zh.py:{arg} takes no variant")
  c = base.finetune("tagging", "tagging", "encoder", "data/chinese/ner/train.conll",
                    "data/chinese/ner/test.conll")
  c.init_from = BODY
  # The tiny body's new tag head needs a larger rate and longer training than the automatic
  # 3e-4 x 3 epochs, as for configs/finetune_tagging.py.
  c.train.learning_rate = 3e-3
  c.train.epochs = 10.0
  c.train.ema_decay = 0.995
  c.train.log_every_steps = 50
  c.eval.every_steps = 500
  c.checkpoint.every_steps = 500
  return c
