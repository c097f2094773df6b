"""Checking who sent a report: GitHub's webhook HMAC, GitHub's partner ECDSA signature, a bearer token or an
HMAC of the generic receiver. Every comparison is constant-time; every function answers True or False and
never raises on hostile input."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from keywatch.domain import Secret


def hmac_sha256_ok(secret: Secret, body: bytes, header: str | None) -> bool:
    """`sha256=<hex>` over the raw body (GitHub's X-Hub-Signature-256, keywatch's X-Keywatch-Signature-256)."""
    if not header:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given:
        return False
    expected = hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode("ascii", "replace"))


def bearer_ok(secret: Secret, header: str | None) -> bool:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return hmac.compare_digest(secret.reveal().encode(), value.strip().encode("utf-8", "replace"))


def ecdsa_ok(pem: str, body: bytes, signature_b64: str | None) -> bool:
    """GitHub's partner signature: base64 DER ECDSA (P-256) with SHA-256 over the raw body."""
    if not signature_b64:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
        key = serialization.load_pem_public_key(pem.encode())
    except (binascii.Error, ValueError, TypeError, UnicodeEncodeError):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
