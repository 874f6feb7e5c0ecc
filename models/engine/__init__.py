"""Inference: the Segmenter, the runtimes it runs on (PyTorch, ONNX Runtime, OpenVINO), export, int8, BN folding, ensembles."""
