"""The input pipeline: where videos come from, clip choice and targets, label protocols, train/eval tf.data streams.

Imports core, config and the data packages; TensorFlow lives here (random_source needs only numpy).
"""
