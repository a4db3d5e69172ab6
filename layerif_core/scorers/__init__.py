"""Layer scorers: ``layerif`` (influence: an estimator plus an aggregator) and model-only baselines."""
