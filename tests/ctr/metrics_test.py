"""AUC against scikit-learn and logloss against a float64 reference."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from hq_jax.ctr import metrics
from hq_jax.errors import UserError

AUC_CASES = [  # name, labels, scores
    ("perfect", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),
    ("reversed", [1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]),
    ("ties", [0, 1, 0, 1, 1, 0], [0.5, 0.5, 0.2, 0.9, 0.2, 0.5]),
    ("all_tied", [0, 1, 1], [3.0, 3.0, 3.0]),
]


@pytest.mark.parametrize("name,labels,scores", AUC_CASES, ids=[c[0] for c in AUC_CASES])
def test_auc_matches_sklearn_on_hand_cases(name, labels, scores):
  del name
  assert metrics.roc_auc(np.array(labels), np.array(scores)) == pytest.approx(
      sk_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_matches_sklearn_on_random_logits_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, size=5000)
  scores = np.round(rng.normal(size=5000) + labels * 0.5, 1)  # Rounded: many ties.
  assert metrics.roc_auc(labels, scores) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_needs_both_classes():
  with pytest.raises(UserError, match="both classes"):
    metrics.roc_auc(np.ones(3), np.arange(3.0))


def test_log_loss_matches_sklearn_and_is_stable():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, size=100)
  logits = rng.normal(size=100) * 3
  probs = 1 / (1 + np.exp(-logits))
  assert metrics.log_loss(labels, logits) == pytest.approx(sk_metrics.log_loss(labels, probs), rel=1e-9)
  assert metrics.log_loss(np.array([1.0]), np.array([-1000.0])) == pytest.approx(1000.0)
