"""The one exception type the CLI turns into a single clear error line and a non-zero exit."""

from __future__ import annotations


class DistilkitError(Exception):
    """A user-facing error: bad input, bad config, missing files. The message is the whole story."""
