"""The embedded default: scikit-learn's 8x8 handwritten digits, no download needed."""

from __future__ import annotations

import numpy as np

from pipeline.data.dataset import Dataset, SplitParams, prepared, split
from pipeline.data.preprocessing import Rescale
from pipeline.plugin.schema import Plugin


class DigitsSource(Plugin[SplitParams]):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package."""

    def load(self, seed: int) -> Dataset:
        """Images (8, 8, 1) of values 0-16, divided by 16 for the model."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype(np.float32)[..., np.newaxis]
        data = split(x, digits.target.astype(np.int64), self.config, seed)
        return prepared(data, [Rescale(1 / 16)])
