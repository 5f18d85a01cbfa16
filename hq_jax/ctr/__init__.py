"""CTR prediction with mixed-precision embeddings (MPE): data, models, quantizers and training."""
