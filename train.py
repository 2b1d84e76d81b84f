"""Fine-tune a model: ``python train.py model=bert task=sentiment tuning=lora`` (see README)."""

# First, before any heavy import: Slurm's requeue signal can come within a second of the job's start
# (a short --time), and its default action ends the process (tunelab.slurm_signal imports only the stdlib).
from tunelab import slurm_signal

slurm_signal.catch_if_slurm()

from tunelab.cli import train  # noqa: E402

if __name__ == "__main__":
    train()
