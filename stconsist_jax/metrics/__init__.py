"""Metrics: clip classification and IoU, frame-AP, action tubes and their linking (from
per-frame boxes or tubelets), video-AP, in plain numpy.

Imports core and data (class tables) only; no JAX, TensorFlow or OpenCV.
"""
