"""Data layer: UCF-101 / UCF101-24 files -> typed records -> TFDS -> tf.data batches.

Modules: `annotations` (pickles and split lists -> `VideoRecord`s), `stats`,
`synthetic` (a dataset in the same on-disk layout), `tfds_builder`
(`ucf101_stconsist`), `video_decode` (OpenCV workers), `pipeline` (tf.data).
Only this package (and tools that build data) imports TensorFlow or OpenCV.
"""
