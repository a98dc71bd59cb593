"""Training loops written out plainly (nanoGPT style)."""
from alchemist_kedro.training.bilevel import BilevelConfig, RaterTrainingResult, train_rater_bilevel

__all__ = ["BilevelConfig", "RaterTrainingResult", "train_rater_bilevel"]
