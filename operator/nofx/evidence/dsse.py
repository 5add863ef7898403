"""DSSE envelopes (github.com/secure-systems-lab/dsse), signed with ed25519: the signature
covers the payload type and the payload bytes through DSSE's pre-authentication encoding, so
neither can be swapped. Keys are PEM files, as `openssl genpkey -algorithm ed25519` writes them."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

IN_TOTO = "application/vnd.in-toto+json"


class BadEnvelope(ValueError):
    """The envelope is malformed, or no signature of it verifies with the key."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 of the raw public key: names the key without revealing anything."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an ed25519 public key")
    return key


def sign(
    payload: bytes, private_key: Ed25519PrivateKey, payload_type: str = IN_TOTO
) -> dict[str, Any]:
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }


def open_envelope(envelope: dict[str, Any], public_key: Ed25519PublicKey) -> bytes:
    """The payload, once a signature by this key verifies; BadEnvelope otherwise."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as error:
        raise BadEnvelope(f"not a DSSE envelope: {error}") from error
    for signature in signatures:
        try:
            public_key.verify(signature, pae(payload_type, payload))
        except InvalidSignature:
            continue
        return payload
    raise BadEnvelope(f"no signature verifies with key {key_id(public_key)[:16]}")
