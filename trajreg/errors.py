"""Errors a user can act on. The CLI turns them into one message and exit status 2."""


class UserError(Exception):
    """Bad input: a config, a path or an option the user can fix."""


class ConfigError(UserError, ValueError):
    """A run or study config that does not validate; the message names the key."""


class DamagedRun(UserError):
    """A run directory whose files are missing, truncated or corrupted; the message
    names the file and what is wrong with it."""


class ReplayMismatch(RuntimeError):
    """A replay did not reproduce the recorded run bit for bit."""
