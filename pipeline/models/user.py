"""A user's own model: a saved file, or a function that builds one.

`file` loads a .keras, .h5 or SavedModel in Keras safe mode: a file that would run Python code
on loading (a serialised lambda) is refused unless `safe_mode: false` says the file is trusted.
A Keras 3 file is rebuilt in tf-keras first (pipeline.models.keras3), checked on a batch of the
data. An inference-only SavedModel (a serving signature, no Keras model) cannot be built as a
Keras model. Either way the file is what the recipe starts from (`start`): the first stage gets
it as its input, so a recipe may begin with any stage that takes its format.
`custom` imports `target` (`package.module:function`) only when the model is built and calls it
with `input_shape`, `num_classes` and `kwargs`; which modules a recipe may name is decided by
the user's environment, not the recipe (pipeline.plugin.security).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline.errors import PipelineError
from pipeline.models.compat import prepared
from pipeline.models.savedmodel import is_inference_only
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from pipeline.plugin.fields import ExistingPath, Required
from pipeline.plugin.schema import Params, Plugin
from pipeline.plugin.security import check_target

MODEL_FILES = (".keras", ".h5", ".hdf5")
TARGET = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")


class FileModelParams(Params):
    """A saved model; its input shape and class count come from the file."""

    name: str = Field(description="Registered model kind (file).")
    path: ExistingPath = Field(
        description="A .keras or .h5 file (tf-keras or Keras 3), or a SavedModel folder (tf-keras, or inference-only)."
    )
    safe_mode: bool = Field(
        True, description="Refuse files that run Python code when loaded; false only for files you trust."
    )

    @field_validator("path")
    @classmethod
    def _is_a_model(cls, path: str) -> str:
        problem = model_file_problem(Path(path))
        if problem:
            raise ValueError(problem)
        return path


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def model_file_problem(location: Path) -> str | None:
    """What makes `location` not a saved model, judged from its layout alone (no TensorFlow), or None.

    Catches a wrong path or a damaged download before any stage runs, instead of after training.
    """
    if location.is_dir():
        return None if (location / "saved_model.pb").exists() else (
            "is a folder without saved_model.pb; point it at a .keras/.h5 file or a SavedModel folder"
        )
    suffix = location.suffix.lower()
    if suffix not in MODEL_FILES:
        return f"expected a {', '.join(MODEL_FILES)} file or a SavedModel folder"
    if suffix == ".keras" and not (zipfile.is_zipfile(location) and "config.json" in zipfile.ZipFile(location).namelist()):
        return "is not a .keras archive (a zip holding config.json); the file is damaged or was saved otherwise"
    if suffix != ".keras" and location.open("rb").read(8) != HDF5_SIGNATURE:
        return f"is not an HDF5 file; the file is damaged or is not a {suffix} model"
    return None


class FileModel(Plugin[FileModelParams]):
    """Start from a saved model (trained or not); `build` ignores the data and loads the file."""

    def __init__(self, config: FileModelParams):
        super().__init__(config)
        self.sample: Any = None  # a batch of the data, to check a Keras 3 rebuild on

    def start_format(self) -> ModelFormat:
        """What the recipe starts from, told from the files alone (no TensorFlow): a Keras model or a signature."""
        return ModelFormat.SAVED_MODEL if is_inference_only(self.config.path) else ModelFormat.KERAS

    def start(self) -> ModelArtifact:
        """The model file the first stage gets as its input.

        An inference-only SavedModel is handed on as it is. A Keras file is loaded as `build`
        loads it (safe mode, a Keras 3 file rebuilt), prepared as every stage gets a model (nested
        models flattened into one graph, a final softmax removed) and saved as a tf-keras .keras
        file, so every stage reads the same checked model.
        """
        source = {"source": self.config.path}
        if self.start_format() is ModelFormat.SAVED_MODEL:
            return ModelArtifact(Path(self.config.path), ModelFormat.SAVED_MODEL, "model", metadata=source)
        from pipeline.models.keras3 import scratch

        path = scratch() / f"start-{uuid.uuid4().hex[:12]}.keras"
        # A file model ignores the data's shape and class count.
        prepared(self.build((), 0), "model.path", self.sample).save(path)
        return ModelArtifact(path, ModelFormat.KERAS, "model", metadata=source)

    def on_data_loaded(self, data: Any) -> None:
        """Keep a batch of `data`: a Keras 3 file's rebuild is checked on it."""
        from pipeline.models.keras3 import sample_of

        self.sample = sample_of(data)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """The saved model, uncompiled; check_compatible compares it with the data."""
        if self.start_format() is ModelFormat.SAVED_MODEL:
            raise PipelineError(
                f"model.path: {self.config.path} is an inference-only SavedModel (a serving signature, no Keras "
                "model) and cannot be trained; save the Keras model with model.save('model.keras')"
            )
        return load_model_file(self.config.path, "model.path", self.config.safe_mode, self.sample)


def load_model_file(path: str, where: str, safe_mode: bool = True, sample: Any = None) -> Any:
    """The tf-keras model saved at `path`, uncompiled; a file that does not load is one line naming `where`.

    A Keras 3 file is rebuilt in tf-keras first and the rebuild checked on `sample` (a batch of
    the data; random inputs when None).
    """
    import tf_keras as keras

    from pipeline.models.keras3 import is_keras3, to_tf_keras
    from pipeline.private_api import safe_mode_scope

    source = to_tf_keras(path, sample, safe_mode, where) if is_keras3(path) else path
    try:
        with safe_mode_scope(safe_mode):
            model = keras.models.load_model(source, compile=False, safe_mode=safe_mode)
    except Exception as error:  # noqa: BLE001 - loaders raise anything from ValueError to OSError
        raise PipelineError(load_failure(path, error, where)) from None
    if not isinstance(model, keras.Model):
        raise PipelineError(f"{where}: {path} is not a Keras model; save it with model.save('model.keras')")
    return model


def load_failure(path: str, error: Exception, where: str = "model.path") -> str:
    """One line saying why `path` did not load and what to do."""
    reason = " ".join(str(error).split())
    if "safe_mode" in reason or "arbitrary code" in reason:
        return (
            f"{where}: {path} runs Python code (a lambda) when loaded, refused in safe mode; "
            "if you trust the file, set model.safe_mode=false"
        )
    return f"{where}: cannot load {path} ({reason[:200]}); save the model with tf_keras (model.save('model.keras'))"


class CustomModelParams(Params):
    """A function of the user's that builds the model."""

    name: str = Field(description="Registered model kind (custom).")
    target: Required = Field(
        description="The builder as package.module:function; called with input_shape, num_classes and kwargs."
    )
    kwargs: dict[str, Any] = Field({}, description="Extra keyword arguments for the builder.")

    @field_validator("target")
    @classmethod
    def _importable(cls, target: str) -> str:
        if not TARGET.match(target):
            raise ValueError("expected package.module:function")
        check_target(target, "model.target")
        # find_spec on the top-level package locates it without running any of its code.
        top = target.split(":")[0].split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ValueError(f"no module named '{top}' on the Python path; install it or add its folder to PYTHONPATH")
        return target


class CustomModel(Plugin[CustomModelParams]):
    """Calls the user's builder: `function(input_shape=..., num_classes=..., **kwargs)`."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """Whatever the builder returns, provided it is a tf-keras model."""
        import tf_keras as keras

        builder = resolve(self.config.target)
        try:
            model = builder(input_shape=tuple(input_shape), num_classes=num_classes, **self.config.kwargs)
        except TypeError as error:
            raise PipelineError(
                f"model.target: {self.config.target} cannot be called as (input_shape, num_classes, **model.kwargs): {error}"
            ) from None
        if not isinstance(model, keras.Model):
            raise PipelineError(
                f"model.target: {self.config.target} returned {type(model).__name__}, not a tf_keras model; "
                "build it with `import tf_keras as keras` (TFMOT needs Keras 2)"
            )
        return model


def resolve(target: str) -> Any:
    """The callable named `package.module:function` (or `package.module.function`)."""
    module_name, _, attribute = target.rpartition(":") if ":" in target else target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PipelineError(f"model.target: cannot import {module_name} ({error}); check the module path") from None
    builder = getattr(module, attribute, None)
    if not callable(builder):
        raise PipelineError(f"model.target: {module_name} has no function '{attribute}'")
    return builder
