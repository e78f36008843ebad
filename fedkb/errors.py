"""Errors that mean "the user asked for something we cannot do", shown as one line."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad request from the person at the command line.

    The CLI prints ``error: <message>`` and exits with status 2; no traceback.
    """
