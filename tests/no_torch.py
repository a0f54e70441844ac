"""Run the edgekit CLI with torch, tensorflow and transformers made unimportable.

`python tests/no_torch.py serve BUNDLE ...` behaves like `edgekit serve BUNDLE ...` on a device
install: any attempt to import a build-only package raises ImportError.
"""

import importlib.abc
import os
import sys

# EDGEKIT_TEST_BLOCK adds comma-separated modules (e.g. a runtime, to simulate a machine without its wheel)
BLOCKED = ("torch", "tensorflow", "transformers", "litert_torch", "jax",
           *filter(None, os.environ.get("EDGEKIT_TEST_BLOCK", "").split(",")))


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this simulates a device install")
        return None


sys.meta_path.insert(0, _Blocker())

if __name__ == "__main__":
    from edgekit.cli import main

    main(sys.argv[1:])
