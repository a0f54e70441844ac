"""edgekit.device: everything that runs on the device.

May import edgekit.core, numpy, the stdlib, a runtime (onnxruntime, ai-edge-litert), tokenizers,
and the HTTP stack (starlette, uvicorn). Never torch, tensorflow or transformers: a device install
does not have them (tests/test_layers.py proves it).
"""
