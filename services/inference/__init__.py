"""The inference service: ONNX models served on a flow's samples, results published per sample."""
