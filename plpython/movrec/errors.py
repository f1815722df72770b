"""Errors raised by movrec, each with the SQLSTATE it surfaces as in PostgreSQL."""

from __future__ import annotations


class MovrecError(Exception):
    """Base class; ``sqlstate`` and ``hint`` reach the client through plpy.error()."""

    sqlstate = "P0001"

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.hint = hint
        self.detail = detail


class InvalidArgument(MovrecError):
    """An argument is out of range or of the wrong kind."""

    sqlstate = "22023"  # invalid_parameter_value


class NullArgument(InvalidArgument):
    sqlstate = "22004"  # null_value_not_allowed


class NotFound(MovrecError):
    """A movie, user or model that the call names does not exist."""

    sqlstate = "P0002"  # no_data_found


class NoChampion(MovrecError):
    """No model is deployed yet."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class CorruptCheckpoint(MovrecError):
    """A registry checkpoint cannot be loaded; nothing was changed."""

    sqlstate = "XX001"  # data_corrupted


class NotEnoughData(MovrecError):
    """Too few ratings to train."""

    sqlstate = "55000"


class NotServable(MovrecError):
    """A model uses a feature that serving does not compute (yet): it cannot be deployed."""

    sqlstate = "0A000"  # feature_not_supported
