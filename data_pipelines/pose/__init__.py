"""Offline pose tools: DWPose whole-body extraction (ONNX Runtime) and OpenPose JSON conversion."""
