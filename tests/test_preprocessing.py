"""Declared preprocessing: every source records its steps, the steps round-trip through JSON and
Keras layers compute them exactly, and the input-contract choice says why it folds or not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data import DigitsSource, Preprocessing, SplitParams
from pipeline.data.arrays import CsvParams, CsvSource, NpzParams, NpzSource
from pipeline.data.idx import IdxParams, IdxSource
from pipeline.data.images import ImageFolderParams, ImageFolderSource
from pipeline.data.preprocessing import Clip, Rescale, Standardize, fit_steps
from techniques.serving import choose_inputs
from tests._data_files import idx_folder, write_csv

RNG = np.random.default_rng(0)
STEPS = [
    [Rescale(1 / 16)],
    [Rescale(1 / 40, -0.25), Clip(1.0)],
    [Standardize(RNG.normal(5, 2, (4,)), RNG.uniform(0.5, 3, (4,)))],
]


@pytest.mark.parametrize("steps", STEPS, ids=["rescale", "minmax", "standardize"])
def test_steps_round_trip_through_json_and_match_their_keras_layers(steps):
    import tf_keras as keras

    raw = RNG.uniform(0, 30, (16, 4)).astype(np.float32)
    preprocessing = Preprocessing(tuple(steps), features=("a", "b", "c", "d"), label="y")
    described = json.loads(json.dumps(preprocessing.to_json((4,))))
    again = Preprocessing.from_json(described)
    assert described["features"] == ["a", "b", "c", "d"] and again.label == "y"
    np.testing.assert_array_equal(again.apply(raw), preprocessing.apply(raw))  # JSON keeps every number
    model = keras.Sequential([keras.Input((4,)), *preprocessing.layers()])
    np.testing.assert_allclose(model.predict(raw, verbose=0), preprocessing.apply(raw), rtol=1e-6, atol=1e-6)
    inside = raw[(raw >= 10).all(axis=1) & (raw <= 40).all(axis=1)] if steps[-1].op == "clip" else raw
    np.testing.assert_allclose(preprocessing.invert(preprocessing.apply(inside)), inside, rtol=1e-5)


def test_per_pixel_statistics_fold_as_one_normalization_layer():
    import tf_keras as keras

    x = RNG.integers(0, 255, (20, 4, 3, 2)).astype(np.uint8)
    (step,) = fit_steps(x, "standard")
    model = keras.Sequential([keras.Input((4, 3, 2)), step.layer(keras)])
    np.testing.assert_allclose(model.predict(x.astype(np.float32), verbose=0), step.apply(x.astype(np.float32)), atol=1e-5)


def test_fit_steps_follow_the_normalize_modes():
    assert fit_steps(np.array([[0, 255]], np.uint8), "unit")[0].scale == 1 / 255
    assert fit_steps(np.array([[0.2, 0.9]]), "unit") == []
    minmax = fit_steps(np.array([[-2.0], [6.0]]), "unit")
    assert [s.op for s in minmax] == ["rescale", "clip"] and Preprocessing(tuple(minmax)).apply(np.array([[10.0]])) == 1
    assert fit_steps(np.ones((3, 2)), "none") == []
    (standard,) = fit_steps(np.array([[1.0, 7.0], [3.0, 7.0]]), "standard")
    assert standard.mean.tolist() == [2.0, 7.0] and standard.std.tolist() == [1.0, 1.0]  # constant feature: std 1


def assert_recorded(data, ops: list[str]) -> None:
    """The source's steps, and its model inputs are exactly those steps applied to the kept raw test inputs."""
    assert [step.op for step in data.preprocessing.steps] == ops
    np.testing.assert_array_equal(data.preprocessing.apply(data.x_test_raw), data.x_test)


def test_every_source_records_its_steps_and_keeps_the_raw_test_inputs(tmp_path):
    digits = DigitsSource(SplitParams(name="digits")).load(seed=0)
    assert_recorded(digits, ["rescale"])
    assert digits.preprocessing.steps[0].scale == 1 / 16 and digits.x_test_raw.max() == 16
    assert digits.preprocessing.color_mode == "grayscale" and digits.preprocessing.value_range == (0.0, 16.0)
    assert digits.labels == tuple("0123456789")

    idx = IdxSource(IdxParams(name="idx", path=str(idx_folder(tmp_path / "idx")))).load(seed=0)
    assert_recorded(idx, ["rescale"])
    assert idx.preprocessing.steps[0].scale == 1 / 255 and idx.x_test_raw.max() > 150

    table = CsvSource(CsvParams(name="csv", path=str(write_csv(tmp_path / "t.csv")), label="species")).load(seed=0)
    assert_recorded(table, ["standardize"])
    assert table.preprocessing.features == ("length", "width", "constant") and table.preprocessing.label == "species"
    assert table.labels == ("setosa", "versicolor", "virginica")

    x = RNG.normal(50, 10, (60, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    assert_recorded(NpzSource(NpzParams(name="npz", path=str(tmp_path / "d.npz"))).load(seed=0), ["rescale", "clip"])


def test_image_folder_records_colour_mode_and_resize(tmp_path):
    import tensorflow as tf

    for k, name in enumerate(["dark", "light"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((10 + i, 12, 3), 40 + 150 * k, np.uint8)
            (tmp_path / "img" / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    params = ImageFolderParams(name="image_folder", path=str(tmp_path / "img"), image_size=[8, 8], test_fraction=0.4)
    data = ImageFolderSource(params).load(seed=0)
    assert_recorded(data, ["rescale"])
    assert data.preprocessing.resize is not None and data.preprocessing.color_mode == "rgb"
    assert data.x_test_raw.max() == pytest.approx(190, abs=1e-3) and data.x_test.max() == pytest.approx(190 / 255)


def test_inputs_auto_keeps_per_feature_statistics_out_of_integer_models():
    standard = Preprocessing((Standardize(np.zeros(3), np.ones(3)),))
    inputs, why = choose_inputs("auto", standard, integer=True)
    assert inputs == "preprocessed" and "per-feature" in why and "inputs=raw" in why
    assert choose_inputs("auto", standard, integer=False)[0] == "raw"
    assert choose_inputs("raw", standard, integer=True)[0] == "raw"
    assert choose_inputs("auto", Preprocessing((Rescale(1 / 255),)), integer=True)[0] == "raw"
    assert choose_inputs("preprocessed", Preprocessing((Rescale(1 / 255),)), integer=True)[0] == "preprocessed"
    assert choose_inputs("preprocessed", Preprocessing(), integer=True)[0] == "raw"  # no steps: the same inputs
