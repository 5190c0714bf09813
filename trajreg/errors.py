"""Errors a user can act on. The CLI turns them into one message and exit status 2."""


class UserError(Exception):
    """Bad input: a config, a path or an option the user can fix."""


class ConfigError(UserError, ValueError):
    """A run or study config that does not validate; the message names the key."""


class ReplayMismatch(RuntimeError):
    """A replay did not reproduce the recorded run bit for bit."""
