"""trainjobs: a small, fast, dependable service for PyTorch pretrain and finetune jobs."""

__version__ = "0.1.0"
