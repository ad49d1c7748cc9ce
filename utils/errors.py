"""The base of every error a user can fix: a bad config, file, dataset or checkpoint.

Scripts catch :class:`UserError` and print ``error: <message>`` instead of a traceback;
each subclass (``ConfigError``, ``DataError``, ``BadSampleError``, ``CheckpointError``,
``WeightsError``, ``PruningError``) says in its message which file or setting to change.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message names the file or setting."""
