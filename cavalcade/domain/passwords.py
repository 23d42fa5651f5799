"""RabbitMQ-compatible salted SHA-256 password hashes (``rabbit_password_hashing_sha256``).

The stored form is ``base64(salt + sha256(salt + utf8(password)))`` with a 4-byte salt, the
same bytes ``rabbitmqctl export_definitions`` writes, so definitions move both ways.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SALT_BYTES = 4
_DIGEST_BYTES = hashlib.sha256().digest_size


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return the stored form of ``password`` with a fresh (or the given) 4-byte salt."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches ``stored``; a missing or malformed hash never matches."""
    if not stored:
        return False
    try:
        raw = base64.b64decode(stored.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    if len(raw) != SALT_BYTES + _DIGEST_BYTES:
        return False
    salt, expected = raw[:SALT_BYTES], raw[SALT_BYTES:]
    actual = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return hmac.compare_digest(actual, expected)
