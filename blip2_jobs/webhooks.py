"""Checking a webhook the service sent, in a receiver written in Python.

    from blip2_jobs.webhooks import verify
    if not verify(secret, request.headers, body):   # body: the raw bytes, before any JSON parsing
        return 400

The algorithm (Standard Webhooks) is written out in the README for receivers in other languages.
"""

import time
from collections.abc import Mapping

from jobs.webhook_signing import signature_matches

DEFAULT_TOLERANCE_S = 300  # a delivery older (or newer) than this is refused: a replayed capture


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether `body` was signed with the tenant's `secret` within `tolerance_s` of now."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        sent_at = int(lowered["webhook-timestamp"])
        return abs(time.time() - sent_at) <= tolerance_s and signature_matches(secret, lowered, body)
    except (KeyError, ValueError):
        return False
