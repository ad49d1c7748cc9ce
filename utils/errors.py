"""The base of every error a user can fix: a bad config, file, dataset or checkpoint.

Scripts catch :class:`UserError` and print ``error: <message>`` instead of a traceback;
each subclass (``ConfigError``, ``DataError``, ``BadSampleError``, ``CheckpointError``,
``WeightsError``, ``PruningError``) says in its message which file or setting to change.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message names the file or setting.

    ``exit_code`` is what a script exits with when it stops on this error."""

    exit_code = 1


def user_message(error: BaseException) -> str:
    """The message of ``error`` in one piece: without the worker traceback that a
    DataLoader worker's re-raised exception carries in front of it."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last_line = text.splitlines()[-1]
        name = f"{type(error).__module__}.{type(error).__qualname__}: "
        text = last_line.removeprefix(name)
    return text
