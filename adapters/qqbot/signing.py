"""Ed25519 for the official QQ bot webhook: the key from the bot secret, request checks, op 13 answers."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_SKEW = 300.0  # a callback whose timestamp is further than 5 minutes from our clock is refused


def key_from_secret(secret: str) -> Ed25519PrivateKey:
    """The bot's key: the secret repeated until it has 32 characters, cut to 32 bytes, as the seed."""
    if not secret:
        raise ValueError("the bot secret is empty")
    seed = secret
    while len(seed) < 32:
        seed += secret
    return Ed25519PrivateKey.from_private_bytes(seed[:32].encode())


def _raw(value: bytes | str) -> bytes:
    # Header values may carry any byte (aiohttp keeps them as surrogate escapes): never raise here.
    return value if isinstance(value, bytes) else value.encode("utf-8", errors="surrogateescape")


def verify(key: Ed25519PrivateKey, signature_hex: bytes | str, timestamp: bytes | str, body: bytes) -> bool:
    """Whether `X-Signature-Ed25519` signs `timestamp + body` with the bot's key. Never raises."""
    try:
        signature = bytes.fromhex(_raw(signature_hex).decode("ascii"))
    except ValueError:  # not hex, or not ASCII at all (UnicodeDecodeError is a ValueError)
        return False
    if len(signature) != 64:
        return False
    try:
        key.public_key().verify(signature, _raw(timestamp) + body)
    except InvalidSignature:
        return False
    return True


def fresh(timestamp: bytes | str, now: float, max_skew: float = MAX_SKEW) -> bool:
    """Whether `X-Signature-Timestamp` (unix seconds) is within `max_skew` of `now`. Never raises."""
    raw = _raw(timestamp)
    if not raw.isdigit() or len(raw) > 12:  # bytes.isdigit() is ASCII-only
        return False
    return abs(now - int(raw)) <= max_skew


def validation_answer(key: Ed25519PrivateKey, plain_token: str, event_ts: str) -> dict[str, str]:
    """The reply to op 13 (callback URL validation): the token back, and its signature.

    It signs `event_ts + plain_token`, the construction `verify` accepts for events: answer only
    requests whose own signature verified, or the endpoint signs whatever a stranger sends.
    """
    signed = (event_ts + plain_token).encode("utf-8", errors="surrogatepass")
    return {"plain_token": plain_token, "signature": key.sign(signed).hex()}
