"""Image folders streamed from disk: the same split and pixels as in memory, fingerprints from file
facts, shuffled and sharded input, the decoded cache, and whole runs that never hold a split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.images import ImageFolderParams, ImageFolderSource
from pipeline.data.streaming import is_streamed
from pipeline.device.params import DeviceParams
from pipeline.device.setup import DeviceSetup
from tests._data_files import image_tree
from tests._runs import TINY, run_cli, table_rows


def load(root: Path, in_memory_mb: int, seed: int = 0, **params):
    """The image folder at `root`, streamed when in_memory_mb is 0."""
    config = ImageFolderParams(name="image_folder", path=str(root), image_size=[16, 16], in_memory_mb=in_memory_mb, **params)
    return ImageFolderSource(config).load(seed=seed)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return image_tree(tmp_path_factory.mktemp("streaming") / "photos", per_class=12)


def test_streamed_folder_has_the_in_memory_split_and_pixels(photos):
    memory, streamed = load(photos, 1024), load(photos, 0)
    assert not memory.streams and streamed.streams and is_streamed(streamed.x_val)
    assert streamed.input_shape == memory.input_shape == (16, 16, 3)
    for name in ("train", "val", "test"):
        x_memory, y_memory = memory.split_named(name)
        x_streamed, y_streamed = streamed.split_named(name)
        np.testing.assert_array_equal(y_streamed, y_memory)
        np.testing.assert_array_equal(np.concatenate(list(streamed.batches(name, size=5))), x_memory)
    np.testing.assert_array_equal(streamed.raw().x_test[:3], memory.raw().x_test[:3])  # raw: pixels 0-255
    assert streamed.preprocessing.steps == memory.preprocessing.steps
    chosen = np.array([4, 0, 7])
    np.testing.assert_array_equal(streamed.x_train[chosen], memory.x_train[chosen])  # a sample decodes just those


def test_max_examples_keeps_the_same_subset_when_streamed(photos):
    memory, streamed = load(photos, 1024, max_examples=30), load(photos, 0, max_examples=30)
    assert len(streamed.x_train) + len(streamed.x_val) + len(streamed.x_test) == 30
    np.testing.assert_array_equal(streamed.y_train, memory.y_train)
    np.testing.assert_array_equal(streamed.x_test[:], memory.x_test)


def test_fingerprint_comes_from_file_facts_without_reading_an_image(tmp_path):
    root = image_tree(tmp_path / "photos")
    before = load(root, 0).fingerprint()
    assert load(root, 0).fingerprint() == before
    # Same sizes and times, other bytes: were any image read, the fingerprint would change.
    files = sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))
    for path in files:
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load(root, 0).fingerprint() == before
    os.utime(files[0], ns=(0, files[0].stat().st_mtime_ns + 10**9))  # one file changed on disk
    assert load(root, 0).fingerprint() != before


def test_training_input_shuffles_each_epoch_and_shards_by_file(photos):
    x = load(photos, 0).x_train
    positions = np.arange(len(x))  # as labels: each element says which file it came from
    device = DeviceSetup(DeviceParams(name="cpu"))
    epochs = np.concatenate([y.numpy() for _, y in device.dataset(x, positions, 4, seed=3).repeat(2)])
    first, second = epochs[: len(x)], epochs[len(x) :]
    assert sorted(first) == sorted(second) == list(positions)  # each example once per epoch
    assert list(first) != list(positions) and list(first) != list(second)  # shuffled, afresh each epoch
    shards = [[int(y) for _, y in x.dataset(positions, shard=(2, index)).as_numpy_iterator()] for index in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(x) // 2  # every worker takes the same number of steps
    assert not set(shards[0]) & set(shards[1])  # each reads its own files


def test_streamed_training_input_is_the_in_memory_one_batch_for_batch(photos):
    # Same seed, same batches in the same order, epoch after epoch: the two paths train the same model.
    device = DeviceSetup(DeviceParams(name="cpu"))

    def two_epochs(data, seed):
        return [(x.numpy(), y.numpy()) for x, y in device.dataset(data.x_train, data.y_train, 4, seed=seed).repeat(2)]

    memory, streamed = two_epochs(load(photos, 1024), 3), two_epochs(load(photos, 0), 3)
    assert len(streamed) == len(memory) > 2
    for (x_streamed, y_streamed), (x_memory, y_memory) in zip(streamed, memory):
        np.testing.assert_array_equal(y_streamed, y_memory)
        np.testing.assert_array_equal(x_streamed, x_memory)
    other_seed = two_epochs(load(photos, 0), 4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(other_seed, streamed))  # the seed does shuffle


def test_decoded_cache_is_written_once_read_back_and_shared_by_every_labelling(photos, tmp_path):
    data = load(photos, 0, cache_decoded=True).with_cache(str(tmp_path / "decoded"))
    x, y = data.x_train, data.y_train
    first = list(x.dataset(y, shuffle_seed=1, cached=True).as_numpy_iterator())
    written = sorted(p.name for p in (tmp_path / "decoded").iterdir())
    assert any(name.endswith(".index") for name in written)
    targets = np.arange(len(x))  # other labels, another seed (a later stage): the same cache is read
    again = list(x.dataset(targets, shuffle_seed=2, cached=True).as_numpy_iterator())
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == written
    assert sorted(float(image.sum()) for image, _ in again) == sorted(float(image.sum()) for image, _ in first)
    pairs = {int(position): float(image.sum()) for image, position in again}  # images still meet their own labels
    assert all(pairs[i] == float(x[i].sum()) for i in range(0, len(x), 5))
    other = load(photos, 0, cache_decoded=True, val_fraction=0.2).with_cache(str(tmp_path / "decoded"))
    assert other.x_train.cache_file(None) != x.cache_file(None) != x.cache_file((2, 0))
    next(iter(load(photos, 0).with_cache(str(tmp_path / "off")).x_train.dataset(cached=True)))
    assert not (tmp_path / "off").exists()  # without data.cache_decoded nothing is written


def test_an_image_that_goes_bad_mid_stream_is_named_in_one_line(photos, tmp_path):
    import logging
    import shutil

    from pipeline.errors import PipelineError
    from techniques.training import FitParams, compile_model, fit
    from tests._tiny import context

    root = Path(shutil.copytree(photos, tmp_path / "photos"))
    data = load(root, 0)  # listed and split; the files break afterwards, as on a disk that fails mid-run
    for x, contents in ((data.x_val, b"not an image"), (data.x_train, None)):
        broken = Path(x.records[3])
        broken.unlink() if contents is None else broken.write_bytes(contents)
    with pytest.raises(PipelineError, match=f"cannot decode image {data.x_val.records[3]} ") as failed:
        list(data.batches("val", size=4))
    assert "\n" not in str(failed.value)
    ctx = context(tmp_path, "train", data=data)
    model = ctx.build_model()
    params = FitParams(epochs=1, batch_size=8)
    compile_model(model, params)
    with pytest.raises(PipelineError, match=f"cannot decode image {data.x_train.records[3]} .*(No such file|not found)") as failed:
        fit(model, params, data, DeviceSetup(DeviceParams(name="cpu")), seed=0, log=logging.getLogger("test"), name="train")
    assert "\n" not in str(failed.value)


def test_decoded_cache_survives_a_run_that_died_and_one_writing_beside_it(photos, tmp_path):
    import fcntl

    x = load(photos, 0, cache_decoded=True).with_cache(str(tmp_path / "decoded")).x_train
    prefix = x.cache_file(None)
    Path(prefix + "_0.lockfile").write_text("")  # what tf.data leaves when a run is killed while writing
    Path(prefix + "_0.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    assert len(list(x.dataset(cached=True).as_numpy_iterator())) == len(x)
    written = sorted(p.name for p in Path(prefix).parent.iterdir())
    assert Path(prefix + ".index").exists() and not [name for name in written if "lockfile" in name or "tempstate" in name]

    other = load(photos, 0, cache_decoded=True, val_fraction=0.2).with_cache(str(tmp_path / "decoded")).x_train
    busy = other.cache_file(None)
    with open(busy + ".lock", "w") as held:  # another run is writing this cache now
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        decoded = list(other.dataset(cached=True).as_numpy_iterator())
    assert len(decoded) == len(other) and not Path(busy + ".index").exists()  # decoded as read, nothing written
    assert float(decoded[0].sum()) == float(other[0].sum())


def test_clearing_the_stage_cache_removes_the_decoded_images(photos, tmp_path, capsys):
    from pipeline.commands.cache import main as cache_cli

    outputs = tmp_path / "outputs"
    x = load(photos, 0, cache_decoded=True).with_cache(str(outputs / "cache" / ".decoded")).x_train
    list(x.dataset(cached=True).as_numpy_iterator())
    cache_cli(["list", "--outputs", str(outputs)])
    assert "decoded images" in capsys.readouterr().out
    cache_cli(["clear", "--outputs", str(outputs)])
    assert "decoded images" in capsys.readouterr().out and not (outputs / "cache" / ".decoded").exists()


@pytest.mark.slow
def test_a_streamed_folder_runs_to_an_export(tmp_path):
    photos = image_tree(tmp_path / "photos", per_class=30)
    done = run_cli(
        "recipe=mobile_int8", "data=image_folder", f"data.path={photos}", "data.image_size=[16,16]",
        "data.in_memory_mb=0", "data.cache_decoded=true", *TINY, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "streamed from disk in batches" in done.stdout
    assert "loaded into memory as one array" not in done.stdout  # no consumer took a whole split
    rows = table_rows(done.stdout)
    assert float(rows["export"]["accuracy"]) > 0.6  # three colours: far above chance (0.33)
    assert any((tmp_path / "outputs" / "cache" / ".decoded").iterdir())


# --- TFRecord files ---------------------------------------------------------------------------------


def write_records(photos: Path, target: Path, files: int = 2, text_labels: bool = False) -> Path:
    """The images of an image folder as tf.train.Example records, in image_folder's order, over `files` files."""
    import tensorflow as tf

    from pipeline.data.images import class_folders, image_paths

    target.mkdir(parents=True, exist_ok=True)
    examples = [(path, label, folder.name) for label, folder in enumerate(class_folders(photos)) for path in image_paths(folder)]
    per_file = -(-len(examples) // files)
    for number in range(files):
        with tf.io.TFRecordWriter(str(target / f"part-{number}.tfrecord")) as writer:
            for path, label, name in examples[number * per_file : (number + 1) * per_file]:
                value = tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])) if text_labels else (
                    tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
                )
                features = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.read_bytes()])),
                            "image/class/label": value}
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    return target


def load_records(folder: Path, in_memory_mb: int, **params):
    from pipeline.data.records import TFRecordParams, TFRecordSource

    config = TFRecordParams(name="tfrecord", path=str(folder), image_size=[16, 16], in_memory_mb=in_memory_mb, **params)
    return TFRecordSource(config).load(seed=0)


def test_tfrecords_give_the_image_folders_split_and_pixels_in_memory_or_streamed(photos, tmp_path):
    records = write_records(photos, tmp_path / "records", text_labels=True)
    folder = load(photos, 1024)
    for in_memory_mb in (1024, 0):
        data = load_records(records, in_memory_mb)
        assert data.streams == (in_memory_mb == 0) and data.class_names == folder.class_names
        for name in ("train", "val", "test"):
            np.testing.assert_array_equal(data.split_named(name)[1], folder.split_named(name)[1])
            np.testing.assert_array_equal(np.concatenate(list(data.batches(name))), folder.split_named(name)[0])
    streamed = load_records(records, 0, max_examples=30)
    assert len(streamed.y_train) + len(streamed.y_val) + len(streamed.y_test) == 30


def test_tfrecord_mistakes_name_the_key_or_file(photos, tmp_path):
    from pipeline.errors import PipelineError

    records = write_records(photos, tmp_path / "records", files=1)
    with pytest.raises(PipelineError, match="data.label_key: no feature 'label' .*features: image/class/label, image/encoded"):
        load_records(records, 0, label_key="label")
    with pytest.raises(PipelineError, match="cannot decode image .*part-0.tfrecord@"):
        load_records(records, 1024, image_key="image/class/label")
    truncated = tmp_path / "short" / "cut.tfrecord"
    truncated.parent.mkdir()
    truncated.write_bytes((records / "part-0.tfrecord").read_bytes()[:-7])
    with pytest.raises(PipelineError, match="cut.tfrecord"):
        load_records(truncated.parent, 0)


# --- CSV tables read in chunks ----------------------------------------------------------------------


def load_csv(path: Path, in_memory_mb: int, **params):
    from pipeline.data.arrays import CsvParams, CsvSource

    config = CsvParams(name="csv", path=str(path), label="species", in_memory_mb=in_memory_mb, **params)
    return CsvSource(config).load(seed=0)


@pytest.mark.parametrize("normalize", ["standard", "unit"])
def test_csv_in_chunks_has_the_in_memory_split_and_scaling(tmp_path, monkeypatch, normalize):
    from pipeline.data import csv_rows
    from tests._data_files import write_csv

    path = write_csv(tmp_path / "table.csv", count=150)
    monkeypatch.setattr(csv_rows, "CHUNK_ROWS", 7)  # many chunks on a small table
    memory, streamed = load_csv(path, 1024, normalize=normalize), load_csv(path, 0, normalize=normalize)
    assert not memory.streams and streamed.streams and streamed.input_shape == memory.input_shape == (3,)
    assert streamed.class_names == memory.class_names
    assert streamed.preprocessing.value_range == pytest.approx(memory.preprocessing.value_range)
    for mine, theirs in zip(streamed.preprocessing.steps, memory.preprocessing.steps):  # fitted on the same rows
        for name in ("mean", "std", "scale", "offset", "high"):
            np.testing.assert_allclose(getattr(mine, name, 0), getattr(theirs, name, 0), rtol=1e-5)
    for name in ("train", "val", "test"):
        (x_memory, y_memory), (x_streamed, y_streamed) = memory.split_named(name), streamed.split_named(name)
        assert len(x_streamed) == len(x_memory)
        # the same rows in each split (streamed ones in file order): compare as sorted (row, label) pairs
        key = lambda x, y: sorted(zip(map(tuple, np.round(x, 4)), y))  # noqa: E731
        assert key(np.concatenate(list(streamed.batches(name, size=16))), y_streamed) == key(x_memory, y_memory)
    chosen = np.array([5, 0, 9])
    np.testing.assert_allclose(streamed.x_train[chosen], np.concatenate(list(streamed.batches("train")))[chosen], rtol=1e-6)
    pairs = list(DeviceSetup(DeviceParams(name="cpu")).dataset(streamed.x_train, streamed.y_train, 8, seed=1).unbatch())
    assert sorted(int(y) for _, y in pairs) == sorted(streamed.y_train.tolist())  # every row once, with its label


def test_csv_in_chunks_checks_every_row_before_training(tmp_path):
    from pipeline.errors import PipelineError
    from tests._data_files import write_csv

    path = write_csv(tmp_path / "table.csv")
    lines = path.read_text().splitlines()
    lines[40] = lines[40].replace(",7", ",seven")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match="column 'constant' line 41 holds 'seven'"):
        load_csv(path, 0)
