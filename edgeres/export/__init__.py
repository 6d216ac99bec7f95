"""Exporters: the QModel's exact numbers written as ONNX (QDQ), TFLite (int8) or C arrays.

Import the format module you need (``edgeres.export.tflite``, ``edgeres.export.onnx``);
this package imports nothing so that each optional runtime stays optional.
"""
