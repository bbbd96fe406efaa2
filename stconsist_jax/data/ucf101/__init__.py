"""UCF-101 / UCF101-24: annotation files and split lists, the user's download, video decoding, the TFDS builder.

Imports core and config; TensorFlow, TFDS and OpenCV live here.
"""
