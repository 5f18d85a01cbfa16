"""Tiny LastFM config for the end-to-end tests (a few seconds on a 2-core CPU).

  python -m experiments.hqgnn --config=experiments/configs/hqgnn_test.py --workdir=/tmp/hqgnn_test
"""

from experiments.configs import hqgnn_lastfm


def get_config():
  config = hqgnn_lastfm.get_config()
  config.model.dim = 16
  config.model.num_layers = 2
  config.train.epochs = 4
  config.train.batch_size = 4096
  config.train.learning_rate = 5e-3
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.eval.every = 2
  return config
