"""Prediction: any video file -> per-frame detections of a restored model -> tubes, JSON record and drawn MP4.

Imports core through evaluation; OpenCV for reading and writing videos, no TensorFlow.
"""
