"""Model sources other than ONNX files: framework models exported to ONNX, kept for their own backend."""
