"""Fine-tune a model: ``python train.py model=bert task=sentiment tuning=lora`` (see README)."""

from tunelab.cli import train

if __name__ == "__main__":
    train()
