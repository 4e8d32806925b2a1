"""Fixtures shared by every test module; helpers live in tests/_runs.py, tests/_tiny.py and tests/_data_files.py."""

from __future__ import annotations

import logging
import os

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"


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
