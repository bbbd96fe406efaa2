"""Evaluation: restoring a step, running the evaluation streams, evaluators per output type, reports and pictures.

Imports core through training; TensorFlow only through the data pipeline (data.pipeline.eval_inputs).
"""
