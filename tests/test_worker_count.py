"""data.worker_count: an explicit count is kept; -1 (the default) picks one for the host."""

import os

import jax
import ml_collections
import pytest

from configs import base
from lm_research.data import inputs


def _config(count):
  return ml_collections.ConfigDict({"data": {"worker_count": count}})


def test_the_default_is_auto_and_none_on_cpu():
  assert base.get_base().data.worker_count == -1
  assert jax.default_backend() == "cpu"
  assert inputs.worker_count(_config(-1), 1) == 0
  assert inputs.worker_count(_config(3), 8) == 3


@pytest.mark.parametrize("cpus, shards, expected", [
    (64, 2, 8),  # 16 workers (64 / 4) over 2 shards
    (224, 1, 16),  # at most 16 a process
    (224, 8, 2),
    (8, 4, 1),  # at least one per shard
])
def test_auto_on_an_accelerator_host(cpus, shards, expected, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(os, "cpu_count", lambda: cpus)
  assert inputs.worker_count(_config(-1), shards) == expected
