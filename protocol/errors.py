"""Errors shared by every process. No ML, no sockets."""

from __future__ import annotations


class ProtocolError(Exception):
    """A message that cannot be accepted. `code` is a stable machine-readable reason.

    Codes used on the wire (Reject.code and the `reason` column of updates.csv):
    bad_header, bad_version, bad_type, bad_field, bad_tensor, truncated, oversized, extra_frames,
    bad_message, bad_shape, bad_index, nonfinite, overflow, unknown_rank, rank_in_use, bad_run, bad_seq,
    future_version, not_ready, bad_encoding, busy, wrong_key, throttled.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# the message of the unknown_rank Reject a server sends for a message from a connection that does not hold the
# rank it names (ps/admission.py, ps/membership.py). It never answers a Hello, which is the join itself: a worker
# that has just said Hello and gets it answers an earlier request (worker/link.py).
NOT_JOINED = "has not joined from this connection"


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or invalid. `key` is the dotted path."""

    def __init__(self, key: str, message: str):
        # "<file>" and "<root>" stand for the config file itself, whose message names it: no key to show
        super().__init__(message if key.startswith("<") else f"config key '{key}': {message}")
        self.key = key
        self.message = message
