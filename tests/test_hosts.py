"""process_0_first's order with two processes, seen from each (process count, index and the
broadcast replaced; the real 2-process path runs in tests/test_multihost.py)."""

import jax
import pytest
from jax.experimental import multihost_utils

from lm_research import hosts


@pytest.fixture
def as_process(monkeypatch):
  """Makes this process look like process ``index`` of 2; returns the log of what happens."""
  log = []

  def become(index, process_0_succeeded=True):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)

    def broadcast(value):
      log.append(("broadcast", int(value)))
      return value if index == 0 else int(process_0_succeeded)

    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    return log

  return become


def test_process_0_works_before_telling_the_others(as_process):
  log = as_process(0)
  assert hosts.process_0_first("prepare", lambda: log.append("work") or 7) == 7
  assert log == ["work", ("broadcast", 1)]


def test_the_others_work_after_process_0(as_process):
  log = as_process(1)
  assert hosts.process_0_first("prepare", lambda: log.append("work") or 7) == 7
  assert log == [("broadcast", 1), "work"]  # what it sends is ignored; process 0's is used


def test_a_failure_on_process_0_stops_every_process(as_process):
  log = as_process(0)

  def fail():
    raise ValueError("no data")

  with pytest.raises(ValueError, match="^no data$"):
    hosts.process_0_first("open the train data", fail)
  assert log == [("broadcast", 0)]  # the others heard of it before process 0 raised
  log = as_process(1, process_0_succeeded=False)
  with pytest.raises(ValueError, match=r"^process 0 could not open the train data \(its log "
                     r"says why\)$"):
    hosts.process_0_first("open the train data", lambda: log.append("work"))
  assert "work" not in log
