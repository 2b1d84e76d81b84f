"""tunelab: fine-tune pretrained language models with Lightning, Hugging Face and Hydra."""

__version__ = "0.1.0"
