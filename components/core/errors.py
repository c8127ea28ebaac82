"""Errors that the CLI reports as one clear line (file, line, reason) instead of a traceback."""


class UserError(Exception):
    """Bad input, bad config or a bad artifact: something the user can fix."""

    exit_code = 1


class InputError(UserError, ValueError):
    """A corpus path, file or record is unusable; the message names the file (and line)."""


class ArtifactError(UserError, ValueError):
    """An upstream artifact is missing, incomplete or inconsistent with the config."""
