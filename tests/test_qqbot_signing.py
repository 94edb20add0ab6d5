"""Ed25519 for the official QQ webhook, against the platform's published test vector."""

from __future__ import annotations

from adapters.qqbot.signing import key_from_secret, validation_answer, verify


def test_op13_answer_matches_the_official_vector() -> None:
    key = key_from_secret("DG5g3B4j9X2KOErG")
    answer = validation_answer(key, "Arq0D5A61EgUu4OxUvOp", "1725442341")
    assert answer == {
        "plain_token": "Arq0D5A61EgUu4OxUvOp",
        "signature": "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d01bcfcadc0842edac85e85205028a1132"
        "afe09280305f13aa6909ffc2d652c706",
    }


def test_event_signature_checked_over_timestamp_and_body() -> None:
    key = key_from_secret("short")
    body = b'{"op":0,"t":"C2C_MESSAGE_CREATE"}'
    signature = key.sign(b"1700000000" + body).hex()
    assert verify(key, signature, "1700000000", body)
    assert not verify(key, signature, "1700000001", body)
    assert not verify(key, signature, "1700000000", body + b" ")
    assert not verify(key, "zz", "1700000000", body)
    assert not verify(key, signature[:-2], "1700000000", body)
