"""Tuning strategies: which parameters train and how the model is exported.

One file per strategy, each a ``TuningStrategy`` named by ``_target_`` in ``configs/tuning/``.
"""

from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.full import Full

__all__ = ["Full", "TuningStrategy"]
