"""edgekit.workshop: the workstation side (distill -> export -> quantize -> verify -> package).

May import edgekit.core, edgekit.device, torch, transformers, onnx, onnxruntime, litert-torch.
Nothing outside this package imports it at module level: the CLI imports it lazily inside
`edgekit build`, so a device install (no torch) can still run `edgekit serve`.
"""

import logging as _logging

# torch/torchao announce optional kernels and deprecations at import time; they are not about
# the user's build, so keep them out of the build log.
for _name in ("torch.utils._pytree", "torchao", "torch.onnx", "onnxscript", "onnxruntime", "root"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

import os as _os

# TensorFlow-derived converter code (litert-torch) logs C++ INFO lines such as the oneDNN notice.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
