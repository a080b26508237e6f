"""Site names: part of file names, node bindings and report text on both sides of the federation."""

from __future__ import annotations

import re

from xincept.common.errors import SettingError

SITE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_site_name(name: str) -> str:
    """``name`` if it is a valid site name (letters, digits, '-' and '_', 1 to 64); a SettingError otherwise."""
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise SettingError(f"site name {name!r} is not allowed: use 1 to 64 letters, digits, '-' or '_' "
                           "(it becomes part of file names and reports)")
    return name
