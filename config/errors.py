"""The one error tree of gliomaseg.

Every package raises these (or subclasses), so that the edges can decide what to do:
a PermanentError fails a job with its message and is never retried; a TransientError
is retried with backoff. Messages state the rule and the value received.
"""

from __future__ import annotations


class GliomasegError(Exception):
    """Base of every error gliomaseg raises on purpose."""


class ConfigError(GliomasegError):
    """The configuration is invalid; the message names the setting and its env variable."""


class PermanentError(GliomasegError):
    """Bad input: the job fails with this reason and is never retried."""


class TransientError(GliomasegError):
    """A peer or service is unavailable (PACS down, broker gone): retry with backoff."""


class MissingSequenceError(PermanentError):
    """A study lacks one of the sequences the model needs."""


class ConversionError(PermanentError):
    """A series could not be converted to a volume."""


class BundleError(PermanentError):
    """A model bundle is missing, incomplete, or does not match its metadata."""
