"""One exception type for every problem a user can fix, so the CLI and the flows can show it
as one clear message instead of a traceback."""


class SegflowError(Exception):
    """A problem with the user's input or environment; the message names the file or value."""
