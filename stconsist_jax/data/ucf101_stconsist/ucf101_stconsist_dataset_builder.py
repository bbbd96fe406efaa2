"""`tfds build` entry point: re-exports the `ucf101_stconsist` builder.

The builder lives in `stconsist_jax.data.tfds_builder`; TFDS finds it here by file name.
"""

from stconsist_jax.data.tfds_builder import Ucf101Stconsist as Builder  # noqa: F401
