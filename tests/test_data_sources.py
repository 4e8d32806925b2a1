"""Every data source on small real files written to tmp_path: shapes, scaling, splits, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import Dataset, DigitsSource, SplitParams
from pipeline.data.idx import IdxParams, IdxSource
from pipeline.errors import PipelineError
from pipeline.recipe import build_plan
from tests.conftest import compose_config

MNIST10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist10k"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """An IDX file: magic (0, 0, 0x08 = unsigned byte, rank), big-endian sizes, then the bytes."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def idx_folder(folder: Path, prefixes=("data",), count=60, classes=3, compress=True) -> Path:
    """A folder of IDX pairs whose images encode their label (class k is brighter), so models can learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in prefixes:
        labels = np.arange(count) % classes
        images = (labels[:, None, None] * 80 + rng.integers(0, 40, (count, 6, 5))).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def load_idx(folder: Path, seed=0, **params) -> Dataset:
    return IdxSource(IdxParams(name="idx", path=str(folder), **params)).load(seed)


def assert_well_formed(data: Dataset, shape: tuple[int, ...], classes: int) -> None:
    """The contract every source keeps: float32 in [0, 1] images (or features), int labels, all splits."""
    assert data.input_shape == shape
    assert data.num_classes == classes
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and len(x) == len(y) > 0
        assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(classes))
    assert set(np.unique(data.y_test)) == set(range(classes))  # stratified: every class is tested


# --- digits ---------------------------------------------------------------------------------------


def test_digits_stays_the_default_and_its_fingerprint_is_stable(tmp_path):
    plan = build_plan(compose_config(tmp_path))
    assert isinstance(plan.data_source, DigitsSource)
    first = plan.data_source.load(seed=42)
    assert_well_formed(first, (8, 8, 1), 10)
    assert first.fingerprint() == DigitsSource(SplitParams(name="digits")).load(seed=42).fingerprint()
    assert first.fingerprint() != DigitsSource(SplitParams(name="digits")).load(seed=1).fingerprint()


def test_max_examples_takes_a_stratified_subset():
    data = DigitsSource(SplitParams(name="digits", max_examples=300)).load(seed=0)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 300
    assert_well_formed(data, (8, 8, 1), 10)


# --- idx ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_pair_is_split_by_the_fractions(tmp_path, compress):
    folder = idx_folder(tmp_path / "idx", compress=compress)
    data = load_idx(folder, test_fraction=0.25, val_fraction=0.25)
    assert_well_formed(data, (6, 5, 1), 3)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (30, 15, 15)
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    # the pixel scale of the file is kept: class 2 images (160..199) stay the brightest
    assert data.x_test[data.y_test == 2].mean() > data.x_test[data.y_test == 0].mean() + 0.5


def test_idx_train_and_test_files_keep_their_split(tmp_path):
    folder = idx_folder(tmp_path / "idx", prefixes=("train", "t10k"), count=30)
    data = load_idx(folder, val_fraction=0.2)
    assert len(data.x_test) == 30  # the whole t10k file, untouched by test_fraction
    assert len(data.x_train) + len(data.x_val) == 30
    assert_well_formed(data, (6, 5, 1), 3)


def test_idx_splits_are_deterministic_for_a_seed(tmp_path):
    folder = idx_folder(tmp_path / "idx")
    assert load_idx(folder, seed=3).fingerprint() == load_idx(folder, seed=3).fingerprint()
    assert load_idx(folder, seed=3).fingerprint() != load_idx(folder, seed=4).fingerprint()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing", "data.path: no such file or folder"),
        ("empty", "data.path: no *-images-idx3-ubyte[.gz] file in"),
        ("null", "data.path: required"),
    ],
)
def test_idx_path_problems_fail_at_validation(tmp_path, path, message):
    (tmp_path / "empty").mkdir()
    value = "null" if path == "null" else str(tmp_path / path)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("*", r"\*")) as error:
        build_plan(compose_config(tmp_path, "data=idx", f"data.path={value}"))
    assert "\n" not in str(error.value)


def test_idx_damaged_files_name_the_file(tmp_path):
    folder = idx_folder(tmp_path / "idx", compress=False)
    images = folder / "data-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(PipelineError, match="data-images-idx3-ubyte is truncated or damaged"):
        load_idx(folder)
    images.write_bytes(b"not an idx file")
    with pytest.raises(PipelineError, match="is not an IDX file"):
        load_idx(folder)
    (folder / "data-labels-idx1-ubyte").unlink()
    with pytest.raises(PipelineError, match="has no labels file data-labels-idx1-ubyte"):
        load_idx(folder)


def test_idx_label_count_must_match(tmp_path):
    folder = idx_folder(tmp_path / "idx")
    write_idx(folder / "data-labels-idx1-ubyte", np.zeros(7, np.uint8), compress=True)
    with pytest.raises(PipelineError, match="has 60 images but .* has 7 labels"):
        load_idx(folder)


@pytest.mark.skipif(not MNIST10K.exists(), reason=f"real MNIST IDX files not found at {MNIST10K}")
def test_idx_reads_real_mnist():
    data = load_idx(MNIST10K)
    assert_well_formed(data, (28, 28, 1), 10)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 10_000
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
