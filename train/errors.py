"""One error type for bad user input.

Every check that guards against a user mistake (a bad path, a checkpoint of another size, a
contradictory option) raises :class:`UserError` with one line that names the problem and the fix.
The command-line entry points catch it and print that line instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message is one line: what is wrong, and the fix."""


def fail(msg: str) -> int:
    """Print ``error: msg`` on stderr and return the exit status of a refused command (2)."""
    import sys

    print(f"error: {msg}", file=sys.stderr)
    return 2
