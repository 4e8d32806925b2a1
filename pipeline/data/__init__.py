"""Data sources: where the train, validation and test splits come from.

A source is a plugin in the `pipeline.data` entry-point group: a class with a `Config` schema and
`load(seed) -> Dataset`. The splits are deterministic for a given seed. Built-in sources live in
one module per family (digits, idx, arrays, images, downloads); none imports TensorFlow at
module level, so that recipes validate quickly.
"""

from pipeline.data.dataset import Dataset, SplitParams, as_labels, normalize, prepared, split, with_validation
from pipeline.data.digits import DigitsSource
from pipeline.data.preprocessing import Preprocessing

__all__ = [
    "Dataset",
    "DigitsSource",
    "Preprocessing",
    "SplitParams",
    "as_labels",
    "normalize",
    "prepared",
    "split",
    "with_validation",
]
