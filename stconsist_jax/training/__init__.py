"""Training: losses, mean teacher, optimizer and the sharded jitted step, the loop, checkpoints, mesh, workdir lock, logs.

Imports core, config, data, models and metrics; TensorFlow only in `summaries` (clu, loaded when used).
"""
