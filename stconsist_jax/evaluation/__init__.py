"""Evaluation: restoring a step, running the evaluation streams, evaluators per output type, reports and pictures.

Imports every layer below prediction; TensorFlow only through the data pipeline.
"""
