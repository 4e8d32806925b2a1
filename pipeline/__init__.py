"""Declarative model-optimization pipeline for TensorFlow.

Importing this package sets the environment TensorFlow reads at import time: TFMOT works
only with Keras 2, so `tf_keras` must back `tf.keras`, and TensorFlow's C++ start-up chatter
is silenced unless the user asked for it.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.2.0"
