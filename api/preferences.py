"""The `Prefer` request header (RFC 7240), as far as this API honours it: `wait=N` on a submission."""

import re
from typing import Annotated

from fastapi import Header

PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        max_length=1000,
        description="`wait=N`: answer once the job has finished (201), or after N seconds (202); N at most 30.",
    ),
]

_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?\s*$", re.IGNORECASE)


def preferred_wait_s(prefer: str | None, ceiling_s: float) -> float | None:
    """The seconds a `Prefer: wait=N` asks for, at most `ceiling_s`; None when it asks for no wait.

    Preferences are hints (RFC 7240 section 2): one this API does not know, or a `wait` it cannot
    read, is ignored rather than refused, and the submission is answered as without it.
    """
    if not prefer:
        return None
    for preference in prefer.split(","):
        token = preference.split(";", 1)[0]  # a preference's own parameters follow a ';'
        if match := _WAIT.match(token):
            wait_s = min(float(match.group(1)), ceiling_s)
            return wait_s if wait_s > 0 else None
    return None
