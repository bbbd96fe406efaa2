"""Training: losses, mean teacher, optimizer and the sharded jitted step, the loop, checkpoints, mesh, workdir lock, logs.

Imports core, config, configs, data, models and metrics; no TensorFlow or OpenCV at import time (TensorBoard and tf.data are reached lazily).
"""
