"""Built-in architectures, user model files and builders, and the data/model compatibility check."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.models import MLP, SmallCNN, check_compatible
from pipeline.models.builtin import MLPParams, ModelParams
from pipeline.models.mobilenet import MobileNetV2, MobileNetV2Params
from pipeline.models.user import CustomModel, CustomModelParams, FileModel, FileModelParams
from tests._runs import compose_config


def dataset(shape: tuple[int, ...], classes: int = 3, count: int = 30) -> Dataset:
    """Random examples of `shape`, every class present in every split."""
    rng = np.random.default_rng(0)
    x = rng.random((count, *shape), dtype=np.float32)
    y = np.arange(count) % classes
    return Dataset(x, y, x[:classes], y[:classes], x[:classes], y[:classes], classes)


IMAGES = dataset((12, 12, 1))
TABLE = dataset((5,))


def small_model(input_shape=(12, 12, 1), classes=3):
    """A quarter-width small CNN, quick to build and save."""
    return SmallCNN(ModelParams(name="small_cnn", width=0.25)).build(input_shape, classes)


# --- built-in architectures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "data"),
    [
        (lambda w: SmallCNN(ModelParams(name="small_cnn", width=w)), IMAGES),
        (lambda w: MLP(MLPParams(name="mlp", width=w, hidden=[16, 8])), TABLE),
        (lambda w: MobileNetV2(MobileNetV2Params(name="mobilenet_v2", width=w)), dataset((32, 32, 3))),
    ],
    ids=["small_cnn", "mlp", "mobilenet_v2"],
)
def test_builtins_fit_the_data_and_width_scales_them(builder, data):
    full, half = builder(1.0), builder(0.5)
    check_compatible(full, data)
    model = full.build(data.input_shape, data.num_classes)
    assert model.input_shape[1:] == data.input_shape and model.output_shape == (None, data.num_classes)
    assert half.build(data.input_shape, data.num_classes).count_params() < 0.6 * model.count_params()
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits, as the training loss expects


def test_mlp_takes_images_too():
    check_compatible(MLP(MLPParams(name="mlp")), IMAGES)


def test_mobilenet_resizes_inside_the_model_and_stays_flat():
    import tf_keras as keras

    model = MobileNetV2(MobileNetV2Params(name="mobilenet_v2", width=0.35, input_size=32)).build((28, 28, 1), 10)
    assert model.input_shape == (None, 28, 28, 1)
    assert isinstance(model.layers[1], keras.layers.Resizing)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # TFMOT wraps layers, not sub-models
    assert model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0).shape == (2, 10)


def test_builtin_models_are_chosen_on_the_command_line(tmp_path):
    plan = check_recipe(compose_config(tmp_path, "model=mobilenet_v2", "model.width=0.5", "model.input_size=64"))
    assert isinstance(plan.model_builder, MobileNetV2) and plan.model_builder.config.input_size == 64
    plan = check_recipe(compose_config(tmp_path, "model=mlp", "model.hidden=[32]"))
    assert plan.model_builder.config.hidden == [32]
    with pytest.raises(PipelineError, match="model.input_size: expected greater than or equal to 32"):
        check_recipe(compose_config(tmp_path, "model=mobilenet_v2", "model.input_size=16"))


# --- compatibility --------------------------------------------------------------------------------


def test_convolutional_models_refuse_tabular_data():
    with pytest.raises(PipelineError, match=r"model=small_cnn: needs images .* shape \(5,\); use model=mlp"):
        check_compatible(SmallCNN(ModelParams(name="small_cnn")), TABLE)


def test_mobilenet_on_small_images_names_input_size():
    with pytest.raises(PipelineError, match="model.input_size: the data's 12x12 images are below .* set model.input_size=32"):
        check_compatible(MobileNetV2(MobileNetV2Params(name="mobilenet_v2")), IMAGES)


def test_one_class_is_not_a_classification_problem():
    with pytest.raises(PipelineError, match="data: only 1 class found"):
        check_compatible(MLP(MLPParams(name="mlp")), dataset((5,), classes=1))


# --- a user's model file --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model.keras", "model.h5", "saved_model"])
def test_model_files_load_and_are_checked_against_the_data(tmp_path, kind):
    path = tmp_path / kind
    small_model().save(path)
    builder = FileModel(FileModelParams(name="file", path=str(path)))
    check_compatible(builder, IMAGES)
    assert builder.build((1,), 1).input_shape == (None, 12, 12, 1)  # the file decides, not the arguments
    with pytest.raises(PipelineError, match=rf"model.path: .*{kind} takes inputs of shape \(12, 12, 1\) but the data gives \(8, 8, 1\)"):
        check_compatible(builder, dataset((8, 8, 1)))
    with pytest.raises(PipelineError, match=rf"model.path: .*{kind} outputs \(3,\) but the data has 10 classes; give the model a final Dense\(10\)"):
        check_compatible(builder, dataset((12, 12, 1), classes=10))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_files_that_run_code_need_an_explicit_opt_in(tmp_path, suffix):
    import tf_keras as keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Lambda(lambda x: x * 2.0)(inputs)))
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    with pytest.raises(PipelineError, match="runs Python code .* refused in safe mode; if you trust the file, set model.safe_mode=false"):
        FileModel(FileModelParams(name="file", path=str(path))).build((4,), 3)
    trusted = FileModel(FileModelParams(name="file", path=str(path), safe_mode=False)).build((4,), 3)
    assert np.allclose(trusted.predict(np.ones((1, 4), np.float32), verbose=0), model.predict(np.ones((1, 4), np.float32), verbose=0))


def test_model_path_problems_fail_at_validation(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing.keras"): "no such file or folder",
        str(tmp_path / "notes.txt"): "expected a .keras, .h5, .hdf5 file or a SavedModel folder",
        str(tmp_path / "empty"): "is a folder without saved_model.pb",
    }
    for path, message in cases.items():
        with pytest.raises(PipelineError, match=f"^model.path: {message}"):
            check_recipe(compose_config(tmp_path, "model=file", f"model.path={path}"))


def test_damaged_model_file_is_refused_at_validation(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(PipelineError, match=r"^model.path: is not a .keras archive"):
        check_recipe(compose_config(tmp_path, "model=file", f"model.path={path}"))


def test_a_model_file_that_looks_right_but_does_not_load_names_the_file(tmp_path):
    import zipfile

    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
    with pytest.raises(PipelineError, match=r"model.path: cannot load .*broken.keras .*model.save\('model.keras'\)"):
        FileModel(FileModelParams(name="file", path=str(path))).build((4,), 3)


# --- a user's builder function --------------------------------------------------------------------

BUILDERS = '''
import tf_keras as keras


def dense(input_shape, num_classes, units=4):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(units), keras.layers.Dense(num_classes)])


def fixed(input_shape, num_classes):
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(num_classes)])


def not_a_model(input_shape, num_classes):
    return "model"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PIPELINE_ALLOWED_MODULES", "my_models")
    return "my_models"


def test_builder_function_gets_the_data_shape_and_kwargs(tmp_path, user_module):
    plan = check_recipe(compose_config(tmp_path, "model=custom", f"model.target={user_module}:dense", "model.kwargs.units=9"))
    model = plan.model_builder.build((5,), 3)
    check_compatible(plan.model_builder, TABLE)
    assert model.layers[1].units == 9 and model.output_shape == (None, 3)


def test_builder_function_problems(user_module):
    def custom(target, **kwargs):
        return CustomModel(CustomModelParams(name="custom", target=target, kwargs=kwargs))

    with pytest.raises(PipelineError, match=r"model.target: my_models:fixed takes inputs of shape \(7,\) but the data gives \(5,\)"):
        check_compatible(custom(f"{user_module}:fixed"), TABLE)
    with pytest.raises(PipelineError, match="returned str, not a tf_keras model"):
        custom(f"{user_module}:not_a_model").build((5,), 3)
    with pytest.raises(PipelineError, match="cannot be called as .*unexpected keyword argument 'depth'"):
        custom(f"{user_module}.dense", depth=2).build((5,), 3)
    with pytest.raises(PipelineError, match="model.target: my_models has no function 'missing'"):
        custom(f"{user_module}:missing").build((5,), 3)


# --- models that end in a softmax ------------------------------------------------------------------


def softmax_models(classes=3):
    """The three ways a Keras model ends in probabilities instead of logits."""
    import tf_keras as keras

    body = [keras.Input((5,)), keras.layers.Dense(8, activation="relu")]
    return {
        "dense activation": keras.Sequential([*body, keras.layers.Dense(classes, activation="softmax")]),
        "Softmax layer": keras.Sequential([*body, keras.layers.Dense(classes), keras.layers.Softmax()]),
        "Activation layer": keras.Sequential([*body, keras.layers.Dense(classes), keras.layers.Activation("softmax")]),
    }


@pytest.mark.parametrize("kind", ["dense activation", "Softmax layer", "Activation layer"])
def test_a_final_softmax_is_removed_so_stages_get_logits(tmp_path, kind, caplog):
    model = softmax_models()[kind]
    path = tmp_path / "probabilities.keras"
    model.save(path)
    builder = FileModel(FileModelParams(name="file", path=str(path)))
    with caplog.at_level("WARNING", logger="pipeline"):
        prepared = check_compatible(builder, TABLE)
    assert "probabilities.keras ends in a softmax; the stages train on the logits before it" in caplog.text
    logits = prepared.predict(TABLE.x_test, verbose=0)
    probabilities = model.predict(TABLE.x_test, verbose=0)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # no longer probabilities...
    assert np.allclose(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), probabilities, atol=1e-5)  # ...their logits


def test_logits_models_are_left_alone(caplog):
    with caplog.at_level("WARNING", logger="pipeline"):
        check_compatible(MLP(MLPParams(name="mlp", hidden=[4])), TABLE)
    assert "softmax" not in caplog.text
