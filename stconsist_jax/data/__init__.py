"""Data: datasets (UCF-101 / UCF101-24 and synthetic twins) -> typed records -> TFDS -> tf.data batches.

Imports core and config; with `prediction` (OpenCV), the only layer that imports TensorFlow or OpenCV.
"""
