"""Fixtures shared by every test module; helpers live in tests/_runs.py, tests/_tiny.py and tests/_data_files.py."""

from __future__ import annotations

import logging
import os

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"


def pytest_collection_modifyitems(items):
    """The three tiers stay apart: `pytest -m slow` must never start a benchmark-scale run."""
    both = [item.nodeid for item in items if item.get_closest_marker("heavy") and item.get_closest_marker("slow")]
    if both:
        raise pytest.UsageError(f"marked both slow and heavy (keep one): {', '.join(both)}")


@pytest.fixture(autouse=True)
def _quiet_tensorflow_logs():
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The small CNN trained on digits for 4 epochs, shared by the stage tests.

    Stages never change their input artifact (they load it and write to their own folder), so
    one trained model serves every test that needs one.
    """
    from stages.train import TrainParams, TrainStage
    from tests._tiny import context

    return TrainStage(TrainParams(epochs=4)).run(None, context(tmp_path_factory.mktemp("trained"), "train"))


@pytest.fixture(scope="session")
def keras3_digits(tmp_path_factory):
    """A Keras 3 CNN trained on the digits data, saved four ways, with its float test predictions."""
    from tests import _keras3_models as k3
    from tests._tiny import digits

    data = digits()
    model = k3.train_keras3(k3.digits_cnn(data.input_shape, data.num_classes), data, epochs=25)
    folder = tmp_path_factory.mktemp("keras3")
    files = {kind: k3.save(model, folder, kind) for kind in ("keras", "h5", "export", "tf_saved_model")}
    logits = model.predict(data.x_test, verbose=0)
    return {"data": data, "files": files, "logits": logits, "accuracy": float((logits.argmax(-1) == data.y_test).mean())}
