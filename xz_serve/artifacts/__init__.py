"""Building the model artifacts: train heads, export ONNX, quantize INT8, report."""
