"""BPR triples, sampled as the LightGCN reference code does, vectorised over a whole epoch.

Per epoch: as many users as there are training interactions, uniform over users with training items; for
each, one of its training items uniformly, and one negative uniformly among the items it has not interacted
with in training (rejection sampling, repeated only for the rejected draws).
"""

import numpy as np

from hq_jax.data.interactions import CSR


def sample_bpr_epoch(train: CSR, num_items: int, rng: np.random.Generator,
                     num_samples: int | None = None) -> np.ndarray:
  """Returns an (S, 3) int32 array of (user, positive item, negative item), S = nnz by default."""
  lengths = train.row_lengths()
  active = np.flatnonzero(lengths > 0)
  if active.size == 0:
    raise ValueError("no user has training items")
  num_samples = train.nnz if num_samples is None else num_samples
  users = active[rng.integers(0, active.size, size=num_samples)]
  offsets = (rng.random(num_samples) * lengths[users]).astype(np.int64)
  pos = train.indices[train.indptr[users] + offsets]
  neg = _sample_negatives(train, num_items, users, rng)
  return np.stack([users, pos, neg], axis=1).astype(np.int32)


def _sample_negatives(train: CSR, num_items: int, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  if np.any(train.row_lengths()[users] >= num_items):
    raise ValueError("a sampled user interacted with every item: no negative exists")
  # Sorted keys user * I + item of all training pairs: membership by binary search.
  keys = train.rows().astype(np.int64) * num_items + train.indices
  neg = rng.integers(0, num_items, size=users.size)
  todo = np.arange(users.size)
  while todo.size:
    cand = users[todo].astype(np.int64) * num_items + neg[todo]
    pos = np.searchsorted(keys, cand)
    hit = keys[np.minimum(pos, keys.size - 1)] == cand
    todo = todo[hit]
    neg[todo] = rng.integers(0, num_items, size=todo.size)
  return neg


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  """The sampler's generator for one epoch: a pure function of (seed, epoch), so resumed runs redraw it."""
  return np.random.default_rng([seed, epoch])
