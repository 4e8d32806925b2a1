"""Raw inputs for `pipeline.predict`, read the way the data sources read them.

A CSV table (the feature columns the export's JSON names, in its order; the label column when
present), image files or a folder of them (class subfolders give labels), or an .npz archive
(`x` or `x_test`, with `y` or `y_test` when present); for a text model, .txt files, folders of them
(class subfolders give labels) or a CSV file's text column, tokenized with the shipped tokenizer. Every reader checks what it can without
TensorFlow; images are decoded with the image_folder source's own function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.arrays import read_csv, read_npz, with_channel
from pipeline.data.images import EXTENSIONS, class_folders, image_paths
from pipeline.data.preprocessing import Preprocessing
from pipeline.data.tokenizer import Tokenizer
from pipeline.errors import PipelineError, quoted

FIX_SHAPE = "give inputs shaped as the JSON's input.shape says"


@dataclass(frozen=True)
class RawInputs:
    """Raw examples (float32, or int32 token ids for text; one per row), a name for each, and labels where the input had
    them: class ids, regression values (float) or multi-label 0/1 rows."""

    names: list[str]
    x: np.ndarray
    y: np.ndarray | None = None


def read(
    paths: list[Path], preprocessing: Preprocessing, shape: tuple[int, ...], classes: list[str], tokenizer: Tokenizer | None = None,
    task: str = "classification",
) -> RawInputs:
    """Raw inputs from `paths`: one CSV or .npz file, or image files and folders; texts for a model with a `tokenizer`."""
    for path in paths:
        if not path.exists():
            raise PipelineError(f"{path}: no such file or folder; give a CSV file, an .npz file, image files or a folder")
    if tokenizer is not None:
        try:
            return read_texts(paths, preprocessing, classes, tokenizer)
        except PipelineError as error:  # the data source's messages name its config key, not a command-line input
            raise PipelineError(str(error).removeprefix("data.path: ").removeprefix("data.text: ")) from None
    suffixes = {path.suffix.lower() for path in paths if path.is_file()}
    if suffixes & {".csv", ".npz"}:
        if len(paths) != 1:
            raise PipelineError(f"{paths[1]}: give one CSV or .npz file at a time")
        reader = read_table if paths[0].suffix.lower() == ".csv" else read_arrays
        inputs = reader(paths[0], preprocessing, shape, classes, task)
    else:
        inputs = read_images(paths, preprocessing, shape, classes)
    if inputs.x.shape[1:] != shape:
        raise PipelineError(f"{paths[0]}: inputs of shape {inputs.x.shape[1:]}, the model takes {shape}; {FIX_SHAPE}")
    return inputs


def read_table(
    path: Path, preprocessing: Preprocessing, shape: tuple[int, ...], classes: list[str], task: str = "classification"
) -> RawInputs:
    """Rows of a CSV file: the model's feature columns by name, and its label column(s) when present."""
    header, rows = read_csv(path, ",")
    features = list(preprocessing.features)
    missing = [name for name in features if name not in header]
    if not features or missing:
        wanted = ", ".join(missing or features) or f"{shape[0]} unnamed features"
        raise PipelineError(f"{path}: the model takes the columns {wanted}, missing from the header; add them")
    columns = [header.index(name) for name in features]
    x = np.empty((len(rows), len(columns)), np.float32)
    for i, (line, row) in enumerate(rows):
        for j, at in enumerate(columns):
            try:
                x[i, j] = float(row[at])
            except ValueError:
                raise PipelineError(
                    f"{path}: line {line} column {quoted(header[at])} holds {quoted(row[at])}, not a number; fix the row"
                ) from None
    names = [f"{path.name}:{line}" for line, _ in rows]
    label = preprocessing.label
    if task != "classification":
        return RawInputs(names, x, table_targets(path, header, rows, (label or "").split(","), task))
    if label is None or label not in header:
        return RawInputs(names, x)
    return RawInputs(names, x, class_ids([row[header.index(label)] for _, row in rows], classes, path))


def table_targets(path: Path, header: list[str], rows: list[tuple[int, list[str]]], labels: list[str], task: str) -> np.ndarray | None:
    """Regression values or multi-label rows of a CSV file's label columns; None when it lacks them."""
    if not all(label in header for label in labels):
        return None
    at = [header.index(label) for label in labels]
    try:
        values = np.array([[float(row[i]) for i in at] for _, row in rows], np.float32)
    except ValueError as error:
        raise PipelineError(f"{path}: the label columns {', '.join(labels)} hold a non-number ({error}); fix the rows") from None
    return values[:, 0] if task == "regression" else values


def read_arrays(
    path: Path, preprocessing: Preprocessing, shape: tuple[int, ...], classes: list[str], task: str = "classification"
) -> RawInputs:
    """`x` (or `x_test`) of an .npz archive, and `y` (or `y_test`) when present."""
    try:
        arrays = read_npz(path)
    except PipelineError as error:
        raise PipelineError(str(error).removeprefix("data.path: ")) from None
    key = next((k for k in ("x", "x_test") if k in arrays), None)
    if key is None:
        raise PipelineError(f"{path}: holds arrays {sorted(arrays)}; save the inputs as x (and their labels as y)")
    x = with_channel(arrays[key]) if len(shape) == 3 else arrays[key]
    names = [f"{path.name}[{i}]" for i in range(len(x))]
    labels = arrays.get("y" if key == "x" else "y_test")
    if labels is not None and task != "classification":  # values or 0/1 rows, as they are
        return RawInputs(names, np.asarray(x, np.float32), np.asarray(labels, np.float32).reshape(len(x), -1)[:, 0]
                         if task == "regression" else np.asarray(labels, np.float32))
    y = None if labels is None else class_ids(labels.tolist(), classes, path)
    return RawInputs(names, np.asarray(x, np.float32), y)


def read_images(paths: list[Path], preprocessing: Preprocessing, shape: tuple[int, ...], classes: list[str]) -> RawInputs:
    """Image files, images in folders, and images in class subfolders (labelled by the folder's name)."""
    if not preprocessing.color_mode:
        raise PipelineError(f"{paths[0]}: the model does not take images; give a CSV or .npz file")
    kinds = ", ".join(EXTENSIONS)
    files, y = labelled_files(
        paths, lambda path: path.suffix.lower() in EXTENSIONS, image_paths, class_folders, classes,
        f"not a CSV, .npz or image file ({kinds})", f"no images ({kinds}) in it or in its subfolders",
    )
    return RawInputs([str(path) for path in files], decode_all(files, preprocessing, shape), y)


def read_texts(paths: list[Path], preprocessing: Preprocessing, classes: list[str], tokenizer: Tokenizer) -> RawInputs:
    """Texts as token ids: a CSV file's text column (labels from its label column when present), or
    .txt files and folders of them (class subfolders give labels), read as the data sources read them."""
    from pipeline.data.text import class_folders, column_texts, read_text, text_files

    if len(paths) == 1 and paths[0].suffix.lower() == ".csv":
        header, rows = read_csv(paths[0], ",")
        column = preprocessing.features[0] if preprocessing.features else None
        if column is None:
            raise PipelineError(f"{paths[0]}: the model was trained on a folder of .txt files; give .txt files or a folder of them")
        if column not in header:
            raise PipelineError(f"{paths[0]}: the model reads texts from the column {quoted(column)}, missing from the header; add it")
        texts = list(column_texts(header, rows, column))
        names = [f"{paths[0].name}:{line}" for line, _ in rows]
        label = preprocessing.label
        y = class_ids([row[header.index(label)] for _, row in rows], classes, paths[0]) if label in header else None
        return RawInputs(names, tokenizer.encode(texts)[0], y)
    files, y = labelled_files(
        paths, lambda path: path.suffix.lower() == ".txt", text_files, class_folders, classes,
        "the model takes text; give .txt files, a folder of them or a CSV file", "no .txt files in it or in its subfolders",
    )
    return RawInputs([str(path) for path in files], tokenizer.encode([read_text(path) for path in files])[0], y)


def labelled_files(
    paths: list[Path], wanted: Callable[[Path], bool], files_in: Callable[[Path], list[Path]],
    class_folders_in: Callable[[Path], list[Path]], classes: list[str], not_wanted: str, none_found: str,
) -> tuple[list[Path], np.ndarray | None]:
    """The files given, the files in the folders given, and those in their class subfolders (labelled by
    the folder's name); class ids only when every file has a label. `not_wanted` and `none_found` end the
    one-line errors for a file of another kind and for finding nothing."""
    found: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_file():
            if not wanted(path):
                raise PipelineError(f"{path}: {not_wanted}")
            found.append((path, None))
            continue
        found += [(file, None) for file in files_in(path)]
        found += [(file, folder.name) for folder in class_folders_in(path) for file in files_in(folder)]
    if not found:
        raise PipelineError(f"{paths[0]}: {none_found}")
    labelled = [label for _, label in found if label is not None]
    y = class_ids(labelled, classes, paths[0]) if len(labelled) == len(found) else None
    return [path for path, _ in found], y


def decode_all(paths: list[Path], preprocessing: Preprocessing, shape: tuple[int, ...]) -> np.ndarray:
    """Pixel values (0-255) of every image, resized as the data source did; other sizes are an error
    when the source did not resize."""
    from pipeline.data.images import decode

    size = list(shape[:2]) if preprocessing.resize else None
    images = []
    for path in paths:
        try:
            image = decode(path, preprocessing.color_mode, size)
        except PipelineError as error:
            raise PipelineError(str(error).removeprefix("data.path: ")) from None
        if image.shape != shape:
            raise PipelineError(f"{path}: image of shape {image.shape}, the model takes {shape}; {FIX_SHAPE}")
        images.append(image)
    return np.stack(images)


def class_ids(labels: list, classes: list[str], path: Path) -> np.ndarray:
    """Class ids of labels given as class names or as ids."""
    index = {name: i for i, name in enumerate(classes)}
    ids = []
    for label in labels:
        text = str(label)
        if isinstance(label, float) and label.is_integer():  # ids stored as floats
            text = str(int(label))
        if text in index:
            ids.append(index[text])
        elif text.isdigit() and int(text) < len(classes):
            ids.append(int(text))
        else:
            raise PipelineError(f"{path}: label {quoted(text)} is not a class of the model ({', '.join(classes)}); fix the label")
    return np.array(ids, np.int64)
