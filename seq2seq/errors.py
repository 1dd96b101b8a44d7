"""The exceptions the CLI turns into a one-line message instead of a traceback.

``UserError`` (exit code 2): a problem the user can fix (bad config, bad input files).
``TrainingStopped`` (exit code 1): training cannot go on, for example a run of non-finite
losses; the message says why and what to do. ``MainRankFailed`` (exit code 2, no message):
under torchrun, rank 0 raised a UserError and printed it. Anything else is a bug in attn
(exit code 1).
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file, line or key and what to do."""


class TrainingStopped(Exception):
    """Training cannot go on (a run of non-finite losses); the message says why and what to do."""


class MainRankFailed(Exception):
    """Under torchrun, rank 0 refused to start; it prints why, the other ranks exit quietly."""
