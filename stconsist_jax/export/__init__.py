"""Export: a restored detector -> an ONNX, TF SavedModel or StableHLO file with its metadata.json,
for runtimes without this project (tools/export.py is the command; docs/deploy.md).

Imports every layer below it. TensorFlow only in `to_savedmodel` and jax2onnx/ONNX only in
`to_onnx`, each imported inside the function that exports, so the others load without them.
"""
