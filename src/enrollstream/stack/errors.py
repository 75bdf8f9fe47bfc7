"""Errors of the local stack."""


class StackError(RuntimeError):
    """The local stack could not be brought up; the message says what to look at."""
