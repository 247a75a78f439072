"""BERT tiny: a 2-layer, 128-wide encoder pretrained with masked LM + next-sentence prediction.

Command:
  python -m lm_research.main --config=configs/bert_tiny.py --workdir=runs/bert_tiny
BERT's shape (post-LN, token types, pooler, MLM + NSP heads) with rotary positions (RoFormer,
ModernBERT) instead of BERT's learned table, since 2026-12-03: minutes of pretraining leave a
learned table near its random start, and a tagger that cannot tell "the previous character"
from any other underfits (docs/experiments.md). `--config.model.position=learned` restores
BERT's table, e.g. to export the body as a Hugging Face BertModel.
Positions need no table, so fine-tuning can read texts longer than pretraining's 128 tokens
(configs/finetune_spam.py reads e-mails in 512-token windows).
Data: the bundled Shakespeare corpus (data/shakespeare: 13 plays to train on, 2 held out; blank
lines separate documents, so a play's speeches are its 12,841 training documents); a 4096-piece
SentencePiece tokenizer is trained on it first (about 3 s).
Measured on the 2-core CPU (2026-12-03, shared with other jobs): 600 steps; held-out MLM
accuracy 17.5% (10.9% with the learned table; always predicting the most frequent piece ','
scores 4.8%), NSP 0.633 at step 600 where always answering "not next" scores 0.596 of the 512
held-out pairs: a speech's next line shares no more words with it than a random speech does
(docs/experiments.md).

Chinese (``:zh``): the bundled People's Daily sample (data/chinese/news: 1.7 MB, ~980
articles, one sentence per line and a blank line between articles, BERT's format, so NSP has
real "not next" sentences). Nothing else changes: the tokenizer keeps each Chinese character a
piece of its own (as BERT's Chinese vocabulary), the 2,781 most frequent of 3,889 (99.66% of
the text; logged), rarer ones as bytes, in 3,144 ids of the 4,096.
  python -m lm_research.main --config=configs/bert_tiny.py:zh --workdir=runs/bert_tiny_zh
Measured (2026-12-03): 600 steps, held-out MLM accuracy 0.0% -> 21.1% per character (12.7%
with the learned table), MLM loss 5.21 nats; NSP 0.5695, the share of "not next" among the
223 held-out pairs: not learnt in 600 steps (docs/experiments.md).
Any other text: --config.data.train_path=... --config.data.eval_path=... with the default.
"""

from configs import base


def get_config(arg: str = ""):
  """BERT-tiny pretraining; ``arg``: '' (Shakespeare) or 'zh' (Chinese news)."""
  if arg not in ("", "zh"):
    raise ValueError(f"configs/bert_tiny.py:{arg} is not '' (Shakespeare) or 'zh' (Chinese)")
  c = base.get_base()
  c.objective = "mlm_nsp"
  c.model = base.model_block(
      family="encoder", vocab_size=4096, d_model=128, num_layers=2, num_heads=2, d_ff=512,
      max_len=512, type_vocab_size=2, pre_norm=False, norm_eps=1e-12, activation="gelu",
      pooler=True, head="pretraining", dropout_rate=0.1,
      # Rotary positions: Chinese NER entity F1 0.62 from this body, 0.20 with a learned table.
      position="rope")
  base.train_on_bundled_corpus(c, batch_size=32)
  if arg == "zh":
    c.data.train_path = "data/chinese/news/train.txt"
    c.data.eval_path = "data/chinese/news/eval.txt"
  # Whole-word masking: '' off, 'pieces' (the tokenizer's words), 'words' (a segmenter's:
  # jieba for Chinese when installed, BERT-wwm; else each character)
  c.data.whole_word_mask = ""
  return c
