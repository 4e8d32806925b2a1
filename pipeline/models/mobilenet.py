"""MobileNetV2 (`model=mobilenet_v2`): the keras.applications backbone fixed to that architecture."""

from pipeline.models.backbone import MIN_SIDE, MobileNetV2, MobileNetV2Params

__all__ = ["MIN_SIDE", "MobileNetV2", "MobileNetV2Params"]
