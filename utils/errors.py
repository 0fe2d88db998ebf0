"""User-facing errors: one clear message and a non-zero exit instead of a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input (data, checkpoint, flag): the message is shown to the user as is."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with a message that says what was kept (raised by the training loop in place of KeyboardInterrupt)."""


def cli_entry(main=None, *, on_interrupt: str = "interrupted"):
    """Wrap a script's ``main(args)``: a UserError prints one ``error: ...`` line and exits with code 2; Ctrl-C
    prints one line (``on_interrupt``: how to continue) and exits with code 130. Use as ``@cli_entry`` or
    ``@cli_entry(on_interrupt="...")``."""
    if main is None:
        return functools.partial(cli_entry, on_interrupt=on_interrupt)

    @functools.wraps(main)
    def wrapped(args):
        try:
            return main(args)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as e:
            print(f"\n{e if isinstance(e, Interrupted) else on_interrupt}", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapped


RESUME_HINT = ("interrupted: every finished epoch is saved; run the same command with --resume to continue from the "
               "last one")
