"""A folder of image files with one subfolder per class (`cats/001.jpg`, `dogs/002.png`, ...).

Files are listed, and the split is chosen from the list. A folder whose decoded pixels fit
`data.in_memory_mb` is decoded once into arrays (fast epochs); a larger one streams: each split
stays a list of files that `tf.data` decodes and resizes in parallel as training reads them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.dataset import Dataset, SplitParams, prepared, split
from pipeline.data.preprocessing import RESIZE, Rescale
from pipeline.data.streaming import Streamed, as_split
from pipeline.errors import PipelineError
from pipeline.plugin.fields import ExistingFolder
from pipeline.plugin.schema import Plugin

log = logging.getLogger("pipeline")

# What tf.io.decode_image reads.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
Side = Annotated[int, Field(ge=8, le=1024)]
Size = Annotated[list[Side], Field(min_length=2, max_length=2)]


class ImageParams(SplitParams):
    """How images become model inputs, and when they stream; shared by image sources."""

    image_size: Size | None = Field(
        None, description="[height, width] every image is resized to; set it to the model's input size (null: size of the first image)."
    )
    color_mode: Literal["rgb", "grayscale"] = Field("rgb", description="Channels: rgb (3) or grayscale (1).")
    in_memory_mb: int = Field(
        1024, ge=0, description="Largest size of the decoded images (float32 pixels, MB) loaded into memory; "
        "larger data sets stream from disk in batches (0: always stream).",
    )
    cache_decoded: bool = Field(
        False, description="Streamed data: keep the decoded training images on disk beside the stage cache "
        "(float32, 4 bytes per pixel value) and read them back after the first epoch instead of decoding again.",
    )


class ImageFolderParams(ImageParams):
    """Where the class folders are and the size every image is resized to."""

    path: ExistingFolder = Field(description="Folder with one subfolder of images (png, jpg, bmp, gif) per class.")

    @field_validator("path")
    @classmethod
    def _has_class_folders(cls, path: str) -> str:
        if len(class_folders(Path(path))) < 2:
            raise ValueError(f"{path} needs at least two class subfolders holding images")
        return path


class ImageFolderSource(Plugin[ImageFolderParams]):
    """Images decoded and resized with TensorFlow; classes numbered by sorted folder name."""

    def load(self, seed: int) -> Dataset:
        """Images (H, W, C) of pixel values divided by 255; class names are the folder names."""
        folders = class_folders(Path(self.config.path))
        files = [(path, label) for label, folder in enumerate(folders) for path in image_paths(folder)]
        size = self.config.image_size or decode(files[0][0], self.config.color_mode, None).shape[:2]
        images = ImageFiles(tuple(str(path) for path, _ in files), example_shape(size, self.config.color_mode))
        y = np.array([label for _, label in files], dtype=np.int64)
        return image_data(images, y, self.config, seed, tuple(folder.name for folder in folders))


def example_shape(size: Any, color_mode: str) -> tuple[int, int, int]:
    """(height, width, channels) of a decoded image."""
    return int(size[0]), int(size[1]), 3 if color_mode == "rgb" else 1


def image_data(images: Streamed, y: np.ndarray, params: ImageParams, seed: int, class_names: tuple[str, ...]) -> Dataset:
    """Images (with labels `y`) split by the params' fractions, seeded and stratified as `split` splits
    arrays, pixel values divided by 255: decoded into memory when they fit `params.in_memory_mb`,
    else streamed (each split a list of records decoded as read). The choice is logged."""
    indices = split(np.arange(len(images)), y, params, seed, class_names)
    examples = len(indices.y_train) + len(indices.y_val) + len(indices.y_test)
    decoded_mb = examples * int(np.prod(images.example_shape)) * 4 / 2**20
    stream = decoded_mb > params.in_memory_mb
    log.info(
        "data: %d images, %.0f MB decoded: %s (data.in_memory_mb=%d)", examples, decoded_mb,
        "streamed from disk in batches" if stream else "decoded into memory", params.in_memory_mb,
    )
    images = replace(images, cache_decoded=params.cache_decoded)
    pick = (lambda at: as_split(images.subset(at))) if stream else (lambda at: decode_all(images.subset(at)))
    data = replace(indices, x_train=pick(indices.x_train), x_val=pick(indices.x_val), x_test=pick(indices.x_test))
    return prepared(data, [Rescale(1 / 255)], color_mode=params.color_mode, resize=RESIZE)


@dataclass(frozen=True)
class ImageFiles(Streamed):
    """Image files of one split, decoded and resized to `example_shape` as they are read."""

    def decoded(self, record: Any) -> Any:
        """One file's pixels as float32 values in [0, 255] (see `decode_pixels`)."""
        import tensorflow as tf

        image = decode_pixels(tf.io.read_file(record), self.example_shape[-1], self.example_shape[:2])
        image.set_shape(self.example_shape)
        return image


def decode_all(images: Streamed) -> np.ndarray:
    """Every image of `images` decoded (in parallel) into one array; an image that cannot be decoded
    is named (see `Streamed.batches`)."""
    return images.take(list(range(len(images))))


def class_folders(root: Path) -> list[Path]:
    """Subfolders of `root` that hold at least one image, sorted by name (hidden ones skipped)."""
    return [
        folder
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and any(image_entries(folder))
    ]


def image_paths(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted, so the order (and the split) never depends on the file system."""
    return [Path(path) for path in sorted(entry.path for entry in image_entries(folder))]  # strings sort faster


def image_entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Image files directly in `folder` as the directory lists them: the listing says which entries
    are files, so a folder of 100,000 images costs no stat call per file (and a check for any
    image stops at the first)."""
    with os.scandir(folder) as entries:
        yield from (entry for entry in entries if Path(entry.name).suffix.lower() in EXTENSIONS and entry.is_file())


def decode(path: Path, color_mode: str | None, size: list[int] | tuple[int, ...] | None) -> np.ndarray:
    """One image as float32 pixel values in [0, 255], resized to `size` when given.

    `pipeline.predict` decodes images with this same function, so a model that takes raw inputs
    sees in use exactly what it was measured on.
    """
    import tensorflow as tf

    try:
        image = decode_pixels(tf.constant(path.read_bytes()), 3 if color_mode == "rgb" else 1, size)
    except (tf.errors.InvalidArgumentError, OSError) as error:
        reason = str(error).splitlines()[0]
        raise PipelineError(f"data.path: cannot decode image {path} ({reason}); remove or replace the file") from None
    return image.numpy()


def decode_pixels(contents: Any, channels: int, size: Any) -> Any:
    """Encoded image bytes (a string tensor) as float32 pixel values in [0, 255], resized to `size`
    when given and different: eagerly for one file, or inside a tf.data pipeline."""
    import tensorflow as tf

    image = tf.cast(tf.io.decode_image(contents, channels=channels, expand_animations=False), tf.float32)
    if size is None:
        return image
    return tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == tf.constant(size, tf.int32)),
        lambda: image,
        lambda: tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 255.0),
    )
