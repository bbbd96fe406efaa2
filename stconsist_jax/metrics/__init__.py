"""Metrics: clip classification and IoU, frame-AP, action tubes and their linking, video-AP, in plain numpy.

Imports core and data (class tables) only; no JAX, TensorFlow or OpenCV.
"""
