"""`[web] password` checking, and `python -m web.console.password` to make a hash for config.toml."""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys

PREFIX = "pbkdf2_sha256$"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<digest>` (salt and digest in base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PREFIX}{iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(given: str, configured: str) -> bool:
    """Whether `given` is the configured password (written as is, or as a hash); constant time.

    Both sides are hashed before comparing, so neither the length nor the content of the
    configured password shows in the time taken.
    """
    if not configured:
        return False
    given_bytes = given.encode("utf-8", errors="surrogateescape")
    if configured.startswith(PREFIX):
        try:
            iterations_text, salt_text, digest_text = configured.removeprefix(PREFIX).split("$")
            iterations = int(iterations_text)
            salt, digest = base64.b64decode(salt_text), base64.b64decode(digest_text)
        except ValueError:
            return False  # a malformed hash matches nothing (the loader does not check its shape)
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", given_bytes, salt, iterations), digest)
    return hmac.compare_digest(hashlib.sha256(given_bytes).digest(), hashlib.sha256(configured.encode()).digest())


def main() -> int:
    """Ask for a password twice and print the line to put in config.toml."""
    first = getpass.getpass("控制台密码 / console password: ")
    if not first:
        print("密码不能为空 / the password must not be empty", file=sys.stderr)
        return 1
    if getpass.getpass("再输入一次 / again: ") != first:
        print("两次输入不一致 / the two entries differ", file=sys.stderr)
        return 1
    print(f'[web]\npassword = "{hash_password(first)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
