"""stconsist_jax: action classification and actor localization on UCF-101 in JAX/Flax.

Consistency-based semi-supervision between a clip and its horizontally flipped copy.
"""

__version__ = '0.1.0'
