"""The one error of the privacy package: a setting that cannot give a guarantee."""

from __future__ import annotations

from fedkb.errors import UserError


class PrivacyConfigError(UserError):
    """A privacy setting that cannot give a guarantee (or asks for one already spent).

    A :class:`~fedkb.errors.UserError`: the CLI shows it as one ``error:`` line.
    """
