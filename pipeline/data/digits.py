"""The embedded default: scikit-learn's 8x8 handwritten digits, no download needed."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipeline.data.dataset import Dataset, SplitParams, split
from pipeline.schema import Params, Plugin


class DigitsSource(Plugin):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package."""

    Config: ClassVar[type[Params]] = SplitParams

    def load(self, seed: int) -> Dataset:
        """Images scaled to [0, 1] with a channel axis: shape (8, 8, 1)."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
        return split(x, digits.target.astype(np.int64), self.config, seed)
