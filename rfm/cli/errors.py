"""The command line's user error: printed as 'rfm COMMAND: error: ...' with exit code 2, never as a traceback."""


class CLIError(Exception):
    """A user error: printed as 'rfm: error: ...' with exit code 2, never as a traceback."""
