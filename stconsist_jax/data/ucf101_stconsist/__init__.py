"""Package form of the `ucf101_stconsist` builder, for the `tfds build` command line.

  tfds build stconsist_jax/data/ucf101_stconsist --manual_dir DIR --config split1_128
"""
