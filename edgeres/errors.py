"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a message naming the file, layer or op and what to do. Exit code 2."""

    exit_code = 2


class AccuracyFloorError(Exception):
    """The result misses a stated accuracy floor (``--min-agreement``, ``--max-drop``). Exit 1."""

    exit_code = 1
