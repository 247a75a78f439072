"""Pretraining objectives: each module builds its examples from documents (numpy, seeded rngs)
and computes its loss. ``causal_lm`` (GPT-2), ``masked_lm`` (BERT MLM + NSP), ``span_corruption`` (T5)."""
