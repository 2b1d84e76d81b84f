"""Tuning strategies: which parameters train, extra losses, and how the result is exported.

One file per strategy, each a ``TuningStrategy`` named by ``_target_`` in ``configs/tuning/``.
"""

from tunelab.tuning.adapter import Adapter
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.bitfit import BitFit
from tunelab.tuning.distill import Distill
from tunelab.tuning.freeze import Freeze
from tunelab.tuning.full import Full
from tunelab.tuning.peft import Peft

__all__ = ["Adapter", "BitFit", "Distill", "Freeze", "Full", "Peft", "TuningStrategy"]
