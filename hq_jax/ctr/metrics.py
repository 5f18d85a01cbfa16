"""CTR metrics: ROC AUC and logloss, in NumPy float64 on the host (evaluation sets fit in memory).

AUC uses the rank-sum (Mann-Whitney) form with tied scores given their average rank, which equals the area
under the ROC curve with ties drawn as diagonal segments (what scikit-learn's `roc_auc_score` computes).
"""

import numpy as np
from scipy import stats

from hq_jax.errors import UserError


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `labels` in {0, 1}."""
  labels = np.asarray(labels).astype(bool).ravel()
  scores = np.asarray(scores, dtype=np.float64).ravel()
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise UserError(f"AUC needs both classes; got {num_pos} positives and {num_neg} negatives")
  ranks = stats.rankdata(scores)  # Average ranks for ties, 1-based.
  return float((ranks[labels].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
  """Mean binary cross-entropy of `logits` (not probabilities), computed stably in float64."""
  labels = np.asarray(labels, dtype=np.float64).ravel()
  logits = np.asarray(logits, dtype=np.float64).ravel()
  # -[y log s(z) + (1 - y) log(1 - s(z))] = softplus(z) - y z.
  return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))
