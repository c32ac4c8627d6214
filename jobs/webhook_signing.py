"""Webhook signatures in the Standard Webhooks style (https://www.standardwebhooks.com).

A tenant's secret is `whsec_` and 32 random bytes in base64. A delivery is signed with HMAC-SHA256
over `<webhook-id>.<webhook-timestamp>.<body>`, keyed by the secret's decoded bytes, and sent as
`webhook-signature: v1,<base64 digest>`, so a receiver can check with any Standard Webhooks library,
or the few lines in the README, that the body came from this service and was not changed on the way.

Torch-, database- and HTTP-free: the Python client (blip2_jobs.webhooks) verifies with it too.
"""

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


@dataclass(frozen=True)
class SignedHeaders:
    """The three headers of a signed delivery."""

    webhook_id: str
    timestamp: int
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> SignedHeaders:
    """The headers that let a receiver holding `secret` check `body` (sent at `timestamp`, Unix seconds)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return SignedHeaders(webhook_id, timestamp, f"{SIGNATURE_VERSION},{digest}")


def signature_matches(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether one of the `webhook-signature` values (space-separated) is this body's, signed with `secret`."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body).signature
    offered = headers["webhook-signature"].split()
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)
