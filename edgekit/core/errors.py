"""User-facing error types. Stdlib only.

An EdgekitError is a mistake the user can fix (bad target name, typo'd key, corrupted bundle).
The CLI prints its message on one line, without a traceback, and exits non-zero.
"""


class EdgekitError(Exception):
    """An error caused by user input or environment, reported without a traceback."""


class ConfigError(EdgekitError):
    """A target or recipe file is missing or does not match its schema."""


class BundleError(EdgekitError):
    """A bundle is missing, incomplete, or fails its integrity checks."""


class BuildError(EdgekitError):
    """A build stage could not complete (including a failed quality gate)."""
