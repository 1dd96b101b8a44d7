"""The one exception type for problems the user can fix (bad config, bad input files).

The CLI turns a ``UserError`` into a one-line message on stderr and exit code 2, with no
traceback. Anything else is a bug in attn and exits with code 1.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file, line or key and what to do."""
