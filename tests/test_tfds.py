"""The tfds source on a tiny TFDS data set built offline: in memory, or streamed when larger than data.in_memory_mb."""

from __future__ import annotations

import logging

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed (pip install tensorflow-datasets)")

from pipeline.data.downloads import TfdsParams, TfdsSource  # noqa: E402 - only with tensorflow-datasets
from pipeline.data.streaming import is_streamed  # noqa: E402
from pipeline.device.params import DeviceParams  # noqa: E402
from pipeline.device.setup import DeviceSetup  # noqa: E402

SIDE = 8


class TinyStripes(tfds.core.GeneratorBasedBuilder):
    """8x8 grayscale noise; class 1 has bright stripes on every other column (registered as tiny_stripes)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(SIDE, SIDE, 1)), "label": tfds.features.ClassLabel(num_classes=2)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(120, 0), "test": self._generate_examples(40, 1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        for i in range(count):
            image = rng.integers(0, 100, (SIDE, SIDE, 1), dtype=np.uint8)
            image[:, ::2] += np.uint8(150 * (i % 2))
            yield i, {"image": image, "label": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tfds")
    TinyStripes(data_dir=str(folder)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return str(folder)


def load(data_dir: str, in_memory_mb: int, **params):
    """tiny_stripes, streamed when in_memory_mb is 0 (its 160 images take 0.04 MB as float32)."""
    config = TfdsParams(name="tfds", dataset="tiny_stripes", data_dir=data_dir, in_memory_mb=in_memory_mb, **params)
    return TfdsSource(config).load(seed=0)


def examples(x, y) -> list:
    """A split's examples as sorted (pixels, label) pairs: the same examples in any order compare equal."""
    return sorted(zip((tuple(np.round(row.ravel(), 5)) for row in np.asarray(x)), np.asarray(y).tolist()))


@pytest.mark.parametrize(
    "params", [{}, pytest.param({"test_split": None}, marks=pytest.mark.slow), pytest.param({"max_examples": 60}, marks=pytest.mark.slow)]
)
def test_streamed_tfds_has_the_in_memory_split_and_scaling(data_dir, caplog, params):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        memory = load(data_dir, 1024, **params)
        streamed = load(data_dir, 0, **params)
    assert "loaded into memory (data.in_memory_mb=1024)" in caplog.text
    assert "streamed from the TFDS files (data.in_memory_mb=0)" in caplog.text
    assert not memory.streams and streamed.streams and is_streamed(streamed.x_test)
    assert streamed.input_shape == memory.input_shape == (SIDE, SIDE, 1)
    assert streamed.num_classes == memory.num_classes == 2
    assert streamed.preprocessing.steps == memory.preprocessing.steps  # pixels / 255
    for name in ("train", "val", "test"):
        (x_memory, y_memory), (x_streamed, y_streamed) = memory.split_named(name), streamed.split_named(name)
        assert len(x_streamed) == len(x_memory) > 0
        assert examples(np.concatenate(list(streamed.batches(name, size=7))), y_streamed) == examples(x_memory, y_memory)
    assert float(np.asarray(streamed.x_train).max()) <= 1.0 < float(np.asarray(streamed.raw().x_train).max())
    chosen = np.array([9, 0, 4])  # a sample out of order decodes just those, in that order
    np.testing.assert_array_equal(streamed.x_train[chosen], np.concatenate(list(streamed.batches("train")))[chosen])
    sample = streamed.x_train.subset(chosen)
    np.testing.assert_array_equal(np.concatenate(list(sample.batches())), streamed.x_train[chosen])


def test_streamed_training_input_pairs_each_example_with_its_label_and_shards(data_dir):
    x = load(data_dir, 0).x_train
    positions = np.arange(len(x))  # as labels: each element says which example it is
    device = DeviceSetup(DeviceParams(name="cpu"))
    epochs = np.concatenate([y.numpy() for _, y in device.dataset(x, positions, 8, seed=3).repeat(2)])
    assert sorted(epochs[: len(x)]) == sorted(epochs[len(x):]) == list(positions)
    assert list(epochs[: len(x)]) != list(positions)  # shuffled
    in_order = np.concatenate(list(x.batches()))
    for image, position in x.dataset(positions).as_numpy_iterator():
        np.testing.assert_array_equal(image, in_order[position])
    shards = [{int(y) for _, y in x.dataset(positions, shard=(2, index)).as_numpy_iterator()} for index in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(x) // 2 and not shards[0] & shards[1]


@pytest.mark.slow
def test_streamed_and_in_memory_tfds_train_to_the_same_accuracy(data_dir):
    import tf_keras as keras

    accuracies = []
    for in_memory_mb in (1024, 0):
        data = load(data_dir, in_memory_mb)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Flatten(input_shape=data.input_shape), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(DeviceSetup(DeviceParams(name="cpu")).dataset(data.x_train, data.y_train, 16, seed=0), epochs=5, verbose=0)
        predicted = np.concatenate([model.predict_on_batch(batch) for batch in data.batches("test")]).argmax(axis=1)
        accuracies.append(float((predicted == data.y_test).mean()))
    assert accuracies[0] >= 0.9 and abs(accuracies[0] - accuracies[1]) <= 0.1, accuracies


def test_fingerprint_is_stable_and_reads_no_example(data_dir, monkeypatch):
    from pipeline.data import tfds_records

    first = load(data_dir, 0)
    monkeypatch.setattr(tfds_records.TfdsExamples, "read", lambda *_: pytest.fail("an example was read"))
    assert first.fingerprint() == load(data_dir, 0).fingerprint() != load(data_dir, 0, max_examples=60).fingerprint()
