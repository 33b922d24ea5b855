"""Recipe errors: one line an operator can act on."""


class ApplyError(Exception):
    """The recipes could not be run against the target at all (not an operation failure)."""
