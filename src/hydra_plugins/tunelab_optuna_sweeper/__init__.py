"""tunelab's Hydra sweeper on Optuna (``hydra/sweeper=tunelab``); the logic is in ``tunelab.search``."""
