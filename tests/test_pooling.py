"""Sequence-classification pooling: 'mean' reads the average of the real tokens."""

import jax.numpy as jnp
import numpy as np
import pytest

from lm_research.models import ModelConfig, build_model


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_mean_pooling_classifies_the_average_of_real_tokens(family):
  cfg = ModelConfig(family=family, vocab_size=32, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                    head="sequence_classification", num_labels=3, pooling="mean",
                    pooler=family == "encoder", type_vocab_size=2 if family == "encoder" else 0)
  model = build_model(cfg, 0)
  ids = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  mask = (ids != 0).astype(jnp.int32)
  out = model(ids, attention_mask=mask)
  mean = (out.hidden_states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  if family == "encoder":
    mean = jnp.tanh(model.pooler.dense(mean))
  expected = model.classifier.dense(mean)
  np.testing.assert_allclose(out.logits, expected, atol=1e-5)
