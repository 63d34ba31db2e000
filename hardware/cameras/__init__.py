"""Cameras behind robolearn's Camera contract: USB/V4L2 devices, streams and video files via OpenCV."""

from hardware.cameras.opencv import (
    CameraConfigError,
    CameraStats,
    OpenCVCamera,
    OpenCVCameraConfig,
)

__all__ = ["CameraConfigError", "CameraStats", "OpenCVCamera", "OpenCVCameraConfig"]
