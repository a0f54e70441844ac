"""edgekit: distill, quantize and export language models for edge hardware, then serve them
on the device while accounting for power and energy.

Layers (imports go one way only):
  edgekit.core   - stdlib only: targets, recipes, manifest, bundle format, units.
  edgekit.device - core + numpy + a runtime (onnxruntime / ai-edge-litert); never torch/tensorflow.
  edgekit.workshop  - device + torch, transformers, onnx, litert-torch; imported lazily by the CLI.
  edgekit.cli    - the `edgekit` command line on top of all three (workshop and matplotlib only inside
                   functions); no layer imports it. tests/test_layers.py and tests/test_structure.py check.
"""

__version__ = "0.1.0"
