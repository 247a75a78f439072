"""BERT tiny: a 2-layer, 128-wide encoder pretrained with masked LM + next-sentence prediction.

Command:
  python -m lm_research.main --config=configs/bert_tiny.py --workdir=runs/bert_tiny
Positions go to 512 (BERT's) although pretraining reads 128-token examples, so fine-tuning
can read longer texts (configs/finetune_spam.py reads e-mails in 512-token windows).
Data: the bundled Shakespeare corpus (data/shakespeare: 13 plays to train on, 2 held out); a
4096-piece SentencePiece tokenizer is trained on it first (about 3 s).
Measured on a 2-core CPU (2026-11-30): 600 steps in 2 min 36 s in all, ~0.2 s/step. Held-out
MLM accuracy 12.3% (untrained 0.0%; always predicting the most frequent piece ',' scores
4.8%), MLM cross-entropy 5.98 nats (unigram model 6.41). Since 2026-12-03 blank lines separate
documents, so a play's speeches are its 12,841 training documents: MLM 10.9%, NSP 0.62 at step
600 where always answering "not next" scores 0.60 of the 512 held-out pairs (0.60 at steps
200-400). NSP does not learn in 600 steps of 32 pairs, and this is not a bug: loss and gradients
equal BertForPreTraining's (tests/test_objectives.py) and the labels match the text, but a
speech's next line shares no more words with it than a random speech does, and at this 2e-3
rate the [CLS] path collapses onto the majority label (docs/experiments.md).

Chinese (``:zh``): the bundled People's Daily sample (data/chinese/news: 1.7 MB, ~980
articles, one sentence per line and a blank line between articles, BERT's format, so NSP has
real "not next" sentences). Nothing else changes: the tokenizer keeps each Chinese character a
piece of its own (as BERT's Chinese vocabulary), the 2,781 most frequent of 3,889 (99.66% of
the text; logged), rarer ones as bytes, in 3,144 ids of the 4,096.
  python -m lm_research.main --config=configs/bert_tiny.py:zh --workdir=runs/bert_tiny_zh
Measured (2-core CPU shared with four other jobs, load ~12, 2026-12-03): 600 steps in 17 min;
held-out MLM accuracy 0.0% -> 12.7% (per character; 14.4% with the earlier word pieces), MLM
loss 6.09 nats. NSP 0.5695 at steps 200-600: the share of "not next" among the 223 held-out
pairs, i.e. no learning yet, though a logistic regression on the pairs' token overlap scores
75-77% (docs/experiments.md).
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
      pooler=True, head="pretraining", dropout_rate=0.1)
  base.train_on_bundled_corpus(c, batch_size=32)
  if arg == "zh":
    c.data.train_path = "data/chinese/news/train.txt"
    c.data.eval_path = "data/chinese/news/eval.txt"
  # Whole-word masking: '' off, 'pieces' (the tokenizer's words), 'words' (a segmenter's:
  # jieba for Chinese when installed, BERT-wwm; else each character)
  c.data.whole_word_mask = ""
  return c
