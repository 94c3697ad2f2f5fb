"""Exceptions raised by `rlhf_lens.runs` when a run directory is wrong or incomplete."""

from __future__ import annotations


class RunFormatError(ValueError):
    """A file in a run directory does not follow the run format (or would not, if written).

    The message names the file (and line or field where it applies), what was
    expected, what was found, and what to do next.
    """


class RunLookupError(LookupError):
    """A stage, checkpoint, data file or model asked for is not in the run.

    The message lists what the run does have.
    """
