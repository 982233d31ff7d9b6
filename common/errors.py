"""The one exception type that user-facing entry points turn into a single clear message."""

from __future__ import annotations


class ConfideError(Exception):
    """A problem with the user's input (config, file, label, update), stated in one line.

    The message always names the offending file or config key. Entry points print it
    without a traceback and exit non-zero.
    """


class ConfigError(ConfideError):
    """A bad experiment config: unknown key, wrong type, or value out of range."""


class DataError(ConfideError):
    """A bad data file: missing, unreadable, missing column, label outside the label set."""


class UpdateError(ConfideError):
    """A malformed model update from a site: wrong keys, wrong shapes, non-finite values."""


class PrivacyError(ConfideError):
    """A privacy computation that would be wrong to report (e.g. epsilon for a vacuous delta)."""


class RunFailed(ConfideError):
    """A run stopped by one of the errors above, raised out of the ServerApp (an ``Exception``,
    unlike ``SystemExit``, which Flower's server thread does not catch) so that Flower records the
    run as failed and every entry point exits non-zero."""


BAD_INPUT, FAILED_RUN = 2, 1


def exit_code(exc: ConfideError) -> int:
    """What an entry point exits with: 1 for a run that started and failed, 2 for bad input."""
    return FAILED_RUN if isinstance(exc, RunFailed) else BAD_INPUT


class PolicyRefused(ConfideError):
    """A site refuses a job (or a round) that its own privacy policy does not allow; names the rule."""
