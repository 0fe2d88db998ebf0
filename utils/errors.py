"""User-facing errors: one clear message and a non-zero exit instead of a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input (data, checkpoint, flag): the message is shown to the user as is."""


def cli_entry(main):
    """Wrap a script's ``main(args)``: a UserError (or bad model name) prints ``error: ...`` and exits with code 2."""

    @functools.wraps(main)
    def wrapped(args):
        try:
            return main(args)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
