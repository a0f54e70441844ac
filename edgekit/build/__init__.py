"""edgekit.build: the workstation side (distill -> export -> quantize -> verify -> package).

May import edgekit.core, edgekit.device, torch, transformers, onnx, onnxruntime, litert-torch.
Nothing outside this package imports it at module level: the CLI imports it lazily inside
`edgekit build`, so a device install (no torch) can still run `edgekit serve`.
"""
