"""Image build errors: one line an operator can act on."""


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""
