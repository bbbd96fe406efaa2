"""Core: file and path handling (local or gs://), box geometry, clip geometry, user errors
and glibc's mmap threshold (allocator).

Imports numpy and etils only: no JAX model code, no TensorFlow, no OpenCV, nothing else of the package.
"""
