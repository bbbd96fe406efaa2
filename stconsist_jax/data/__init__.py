"""Data layer: UCF-101 / UCF101-24 files -> typed records -> TFDS -> tf.data batches.

Modules: `annotations` (pickles and split lists -> `VideoRecord`s), `stats`, `download`
(a user's UCF-101 folder: layout, records, problems, fingerprint), `synthetic` and
`synthetic_video` (a dataset in the same on-disk layout), `prepared` (cached synthetic
builds), `tfds_builder` (`ucf101_stconsist`), `video_decode` (OpenCV workers), `sources`
(where the streams read videos), `clips` (per-clip TensorFlow functions),
`train_stream` and `eval_streams` (tf.data). Only this package (and tools that build
data) imports TensorFlow or OpenCV.
"""
