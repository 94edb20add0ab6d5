"""Ed25519 for the official QQ bot webhook: the key from the bot secret, event checks, op 13 answers."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def key_from_secret(secret: str) -> Ed25519PrivateKey:
    """The bot's key: the secret repeated until it has 32 characters, cut to 32 bytes, as the seed."""
    if not secret:
        raise ValueError("the bot secret is empty")
    seed = secret
    while len(seed) < 32:
        seed += secret
    return Ed25519PrivateKey.from_private_bytes(seed[:32].encode())


def verify(key: Ed25519PrivateKey, signature_hex: str, timestamp: str, body: bytes) -> bool:
    """Whether `X-Signature-Ed25519` signs `timestamp + body` with the bot's key."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    if len(signature) != 64:
        return False
    try:
        key.public_key().verify(signature, timestamp.encode() + body)
    except InvalidSignature:
        return False
    return True


def validation_answer(key: Ed25519PrivateKey, plain_token: str, event_ts: str) -> dict[str, str]:
    """The reply to op 13 (callback URL validation): the token back, and its signature."""
    signature = key.sign((event_ts + plain_token).encode()).hex()
    return {"plain_token": plain_token, "signature": signature}
