"""Work done once for all processes: process 0 first, the others once it has succeeded.

Preparing a dataset or deriving a run's labels writes shared files (the workdir and data
directories are storage every host sees). Done by every process at once, they would race to
write the same files; so process 0 does it, and the others then run the same code, which finds
the files in place and only reads them. A failure on process 0 stops every process with one
line instead of leaving the others waiting at the next collective.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def process_0_first(what: str, fn: Callable[[], T]) -> T:
  """``fn()`` on process 0, then on the others (all processes call this, in the same order)."""
  if jax.process_count() == 1:
    return fn()
  error, result = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001  (re-raised below, after telling the others)
      error = e
  done = multihost_utils.broadcast_one_to_all(np.int32(error is None))
  if error is not None:
    raise error
  if not done:
    raise ValueError(f"process 0 could not {what} (its log says why)")
  return result if jax.process_index() == 0 else fn()
