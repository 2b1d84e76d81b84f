"""Full fine-tuning: every parameter trains."""

from tunelab.tuning.base import TuningStrategy


class Full(TuningStrategy):
    name = "full"
