"""Export: ONNX (DeepStream/TAO-compatible names), with a parity check against eager PyTorch."""
