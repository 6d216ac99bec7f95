"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a message naming the file, layer or op and what to do. Exit code 2."""

    exit_code = 2


class AccuracyFloorError(Exception):
    """The result misses a stated accuracy floor (``--min-agreement``, ``--max-drop``). Exit 1."""

    exit_code = 1


class BundleWrittenInterrupt(Exception):
    """Ctrl-C or SIGTERM after the bundle was complete and in place (during the benchmark or
    the summary): the exit status stays the signal's, and the message says the bundle is good."""

    def __init__(self, bundle: object, exit_code: int) -> None:
        super().__init__(f"interrupted after the bundle was written: {bundle} is complete and "
                         "checked (what came after it, such as the benchmark, did not finish)")
        self.bundle = bundle
        self.exit_code = exit_code
