"""A folder of image files with one subfolder per class (`cats/001.jpg`, `dogs/002.png`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.dataset import Dataset, SplitParams, prepared, split
from pipeline.data.preprocessing import RESIZE, Rescale
from pipeline.errors import PipelineError
from pipeline.plugin.fields import ExistingFolder
from pipeline.plugin.schema import Plugin

# What tf.io.decode_image reads.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
Side = Annotated[int, Field(ge=8, le=1024)]
Size = Annotated[list[Side], Field(min_length=2, max_length=2)]


class ImageFolderParams(SplitParams):
    """Where the class folders are and the size every image is resized to."""

    path: ExistingFolder = Field(description="Folder with one subfolder of images (png, jpg, bmp, gif) per class.")
    image_size: Size | None = Field(
        None, description="[height, width] every image is resized to; set it to the model's input size (null: size of the first image)."
    )
    color_mode: Literal["rgb", "grayscale"] = Field("rgb", description="Channels: rgb (3) or grayscale (1).")

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
        size: list[int] | tuple[int, ...] | None = self.config.image_size
        images = []
        for path, _ in files:
            image = decode(path, self.config.color_mode, size)
            size = size or image.shape[:2]  # the first image fixes the size when none is configured
            images.append(image)
        x = np.stack(images)
        y = np.array([label for _, label in files], dtype=np.int64)
        data = split(x, y, self.config, seed, tuple(folder.name for folder in folders))
        return prepared(data, [Rescale(1 / 255)], color_mode=self.config.color_mode, resize=RESIZE)


def class_folders(root: Path) -> list[Path]:
    """Subfolders of `root` that hold at least one image, sorted by name (hidden ones skipped)."""
    return [
        folder
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and image_paths(folder)
    ]


def image_paths(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted, so the order (and the split) never depends on the file system."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())


def decode(path: Path, color_mode: str | None, size: list[int] | tuple[int, ...] | None) -> np.ndarray:
    """One image as float32 pixel values in [0, 255], resized to `size` when given.

    `pipeline.predict` decodes images with this same function, so a model that takes raw inputs
    sees in use exactly what it was measured on.
    """
    import tensorflow as tf

    try:
        image = tf.io.decode_image(
            path.read_bytes(), channels=3 if color_mode == "rgb" else 1, expand_animations=False
        )
    except (tf.errors.InvalidArgumentError, OSError) as error:
        reason = str(error).splitlines()[0]
        raise PipelineError(f"data.path: cannot decode image {path} ({reason}); remove or replace the file") from None
    image = tf.cast(image, tf.float32)
    if size is not None and tuple(image.shape[:2]) != tuple(size):
        image = tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 255.0)
    return image.numpy()
