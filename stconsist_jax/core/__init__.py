"""Core: file and path handling (local or gs://), box geometry, clip geometry and user errors.

Imports numpy and etils only: no JAX model code, no TensorFlow, no OpenCV, nothing else of the package.
"""
