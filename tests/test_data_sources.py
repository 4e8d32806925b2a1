"""Every data source on small real files written to tmp_path: shapes, scaling, splits, errors."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.data import Dataset, DigitsSource, SplitParams
from pipeline.data.arrays import CsvParams, CsvSource, NpzParams, NpzSource
from pipeline.data.downloads import KerasParams, KerasSource
from pipeline.data.idx import IdxParams, IdxSource
from pipeline.data.images import ImageFolderParams, ImageFolderSource
from pipeline.errors import PipelineError
from tests._data_files import MNIST10K, idx_folder, image_tree, write_csv, write_idx
from tests._runs import compose_config


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
    plan = check_recipe(compose_config(tmp_path))
    assert isinstance(plan.data_source, DigitsSource)
    first = plan.data_source.load(seed=42)
    assert_well_formed(first, (8, 8, 1), 10)
    assert first.fingerprint() == DigitsSource(SplitParams(name="digits")).load(seed=42).fingerprint()
    assert first.fingerprint() != DigitsSource(SplitParams(name="digits")).load(seed=1).fingerprint()


def test_max_examples_takes_a_stratified_subset():
    data = DigitsSource(SplitParams(name="digits", max_examples=300)).load(seed=0)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 300
    assert_well_formed(data, (8, 8, 1), 10)


def test_too_few_examples_per_class_is_one_clear_line():
    with pytest.raises(PipelineError, match=r"^data: cannot split 12 examples of 10 classes .*data.max_examples$"):
        DigitsSource(SplitParams(name="digits", max_examples=12)).load(seed=0)


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
        check_recipe(compose_config(tmp_path, "data=idx", f"data.path={value}"))
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


# --- npz ------------------------------------------------------------------------------------------


def labelled_images(count=60, classes=3, shape=(6, 5)) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose brightness encodes their class."""
    rng = np.random.default_rng(1)
    labels = np.arange(count) % classes
    images = labels.reshape(-1, *[1] * len(shape)) * 80 + rng.integers(0, 40, (count, *shape))
    return images.astype(np.uint8), labels


def test_npz_x_and_y_are_split_and_scaled(tmp_path):
    x, y = labelled_images()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = NpzSource(NpzParams(name="npz", path=str(tmp_path / "d.npz"))).load(seed=0)
    assert_well_formed(data, (6, 5, 1), 3)
    assert data.x_train.max() <= 1 and data.x_train.max() > 0.7  # uint8 / 255


def test_npz_ready_made_splits_and_text_labels(tmp_path):
    x, y = labelled_images(shape=(4, 4, 3))
    names = np.array(["cat", "dog", "owl"])[y]
    np.savez(tmp_path / "d.npz", x_train=x[:45], y_train=names[:45], x_test=x[45:], y_test=names[45:])
    data = NpzSource(NpzParams(name="npz", path=str(tmp_path / "d.npz"), val_fraction=0.2)).load(seed=0)
    assert_well_formed(data, (4, 4, 3), 3)
    assert len(data.x_test) == 15 and len(data.x_val) == 9
    assert data.class_names == ("cat", "dog", "owl")
    assert np.array_equal(data.y_test, y[45:])


def test_npz_standard_normalisation_uses_training_statistics(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(50, 10, (90, 4))
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(90) % 3)
    data = NpzSource(NpzParams(name="npz", path=str(tmp_path / "t.npz"), normalize="standard")).load(seed=0)
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(data.x_test.mean(axis=0), 0, atol=1e-5)  # the test split is not refitted


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 2, 2))}, "save arrays named x and y"),
        ({"x": np.zeros((4, 2, 2)), "y": np.zeros(3)}, "4 examples in x but 3 labels in y"),
        ({"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.zeros(4)}, "pickled objects"),
    ],
)
def test_npz_problems_name_the_file(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PipelineError, match=message):
        NpzSource(NpzParams(name="npz", path=str(tmp_path / "bad.npz"))).load(seed=0)


def test_npz_path_must_be_a_file(tmp_path):
    with pytest.raises(PipelineError, match="data.path: is a folder; point it at a file"):
        check_recipe(compose_config(tmp_path, "data=npz", f"data.path={tmp_path}"))


# --- csv ------------------------------------------------------------------------------------------


def test_csv_reads_features_and_text_labels(tmp_path):
    path = write_csv(tmp_path / "iris.csv")
    data = CsvSource(CsvParams(name="csv", path=str(path), label="species")).load(seed=0)
    assert_well_formed(data, (3,), 3)
    assert data.class_names == ("setosa", "versicolor", "virginica")
    assert np.allclose(data.x_train[:, 0].mean(), 0, atol=1e-5)  # standardised by default
    assert np.all(data.x_train[:, 2] == 0)  # a constant column stays finite
    # the first feature separates the classes
    assert data.x_test[data.y_test == 2, 0].min() > data.x_test[data.y_test == 0, 0].max()


def test_csv_feature_selection_and_errors(tmp_path):
    path = write_csv(tmp_path / "iris.csv")
    chosen = CsvSource(CsvParams(name="csv", path=str(path), label="species", features=["width"])).load(seed=0)
    assert chosen.input_shape == (1,)
    with pytest.raises(PipelineError, match=r"data.label: no column 'label' in the CSV file \(columns: length, species"):
        CsvSource(CsvParams(name="csv", path=str(path))).load(seed=0)
    with pytest.raises(PipelineError, match="data.features: column 'species' line 2 holds 'setosa', not a number"):
        CsvSource(CsvParams(name="csv", path=str(path), label="width", features=["species"])).load(seed=0, task="regression")
    path.write_text(path.read_text() + "1,setosa\n")
    with pytest.raises(PipelineError, match="line 92 has 2 fields but the header has 4"):
        CsvSource(CsvParams(name="csv", path=str(path), label="species")).load(seed=0)


def test_mistyped_data_key_is_one_line_with_a_suggestion(tmp_path):
    path = write_csv(tmp_path / "iris.csv")
    with pytest.raises(PipelineError, match=r"^data.lable: unknown key; did you mean 'label'\?"):
        check_recipe(compose_config(tmp_path, "data=csv", f"data.path={path}", "data.lable=species"))


def test_csv_is_configured_from_the_command_line(tmp_path):
    path = write_csv(tmp_path / "iris.csv")
    plan = check_recipe(compose_config(tmp_path, "data=csv", f"data.path={path}", "data.label=species", "data.features=[length,width]"))
    assert plan.data_source.load(seed=0).input_shape == (2,)


# --- image_folder ---------------------------------------------------------------------------------


def test_image_folder_resizes_every_image(tmp_path):
    root = image_tree(tmp_path / "photos")
    data = ImageFolderSource(ImageFolderParams(name="image_folder", path=str(root), image_size=[16, 16])).load(seed=0)
    assert_well_formed(data, (16, 16, 3), 3)
    assert data.class_names == ("blue", "green", "red")
    red = data.x_train[data.y_train == 2]
    assert red[..., 0].mean() > 0.8 and red[..., 2].mean() < 0.2


def test_image_folder_grayscale_takes_the_first_size_by_default(tmp_path):
    root = image_tree(tmp_path / "photos")
    data = ImageFolderSource(ImageFolderParams(name="image_folder", path=str(root), color_mode="grayscale")).load(seed=0)
    assert_well_formed(data, (12, 10, 1), 3)


def test_image_folder_problems(tmp_path):
    root = image_tree(tmp_path / "photos")
    (root / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match="cannot decode image .*broken.png"):
        ImageFolderSource(ImageFolderParams(name="image_folder", path=str(root))).load(seed=0)
    (tmp_path / "flat").mkdir()
    with pytest.raises(PipelineError, match="needs at least two class subfolders"):
        check_recipe(compose_config(tmp_path, "data=image_folder", f"data.path={tmp_path / 'flat'}"))
    with pytest.raises(PipelineError, match=r"data.image_size.0: expected greater than or equal to 8 \(got 2\)"):
        check_recipe(compose_config(tmp_path, "data=image_folder", f"data.path={root}", "data.image_size=[2,2]"))


# --- Keras built-ins and TensorFlow Datasets ------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_keras_builtins_offline_name_the_local_alternatives(tmp_path, monkeypatch, name):
    # A proxy on a closed local port makes the download fail at once, as it does without a network.
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    # urlopen keeps the first opener it builds, proxy included: let this test's opener go with it.
    monkeypatch.setattr(urllib.request, "_opener", None)
    plan = check_recipe(compose_config(tmp_path, f"data={name}", f"data.cache_dir={tmp_path / 'keras'}"))
    assert isinstance(plan.data_source, KerasSource)
    with pytest.raises(PipelineError) as error:
        plan.data_source.load(seed=0)
    message = str(error.value)
    assert message.startswith(f"data.name={name}: download failed")
    assert "data=idx data.path=DIR" in message and "data=npz data.path=FILE" in message
    assert "\n" not in message


def test_keras_source_name_is_checked():
    with pytest.raises(Exception, match="mnist"):
        KerasParams(name="emnist")


def test_tfds_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    found = importlib.util.find_spec  # the package is hidden, as on a machine without the tfds extra
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorflow_datasets" else found(name, *args))
    with pytest.raises(PipelineError, match=r"^data: tensorflow-datasets is not installed; pip install tensorflow-datasets"):
        check_recipe(compose_config(tmp_path, "data=tfds", "data.dataset=mnist"))
