"""Exports of a trained adapter to formats that predict without PEFT (ONNX: `exporters.onnx`)."""
