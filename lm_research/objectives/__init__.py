"""Pretraining objectives: each module builds its examples from documents and computes its loss.

``causal_lm`` (GPT-2), ``masked_lm`` (BERT MLM + NSP), ``span_corruption`` (T5); example
construction is numpy with a seeded ``np.random.Generator``, run inside the Grain pipeline.
"""
