"""Log safety: no configured secret reaches a log line (messages, tracebacks, URLs, provider errors),
and control characters in logged values cannot forge or clear lines."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from core.config import Settings, collect_secrets, loads_config
from core.log import REDACTED, RING, redact, redact_record, set_secrets, setup_logging
from llm.base import AllAccountsFailed, ChatTurn
from llm.openai_compat import OpenAICompatible
from tests.fakes.openai_server import FakeOpenAI
from tests.test_llm import fast_backoff, make_settings


def _no_patch(record: Any) -> None:
    """loguru cannot unset a patcher; this one does nothing."""


@pytest.fixture
def redaction() -> Iterator[None]:
    """Start from no configured secrets; afterwards leave the logger as other tests expect it."""
    set_secrets([], replace=True)
    yield
    set_secrets([], replace=True)
    logger.configure(patcher=_no_patch)


@pytest.fixture
def lines(redaction: None) -> Iterator[list[str]]:
    """Every formatted log entry (message, plus the traceback when one is logged)."""
    found: list[str] = []
    # as the real sinks: diagnose=True would print local variables, secrets included
    sink = logger.add(
        lambda message: found.append(str(message)), level="TRACE", format="{message}", diagnose=False, backtrace=False
    )
    yield found
    logger.remove(sink)


@pytest.fixture
async def fake() -> Any:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


def leaked(secret: str, entries: list[str]) -> list[str]:
    return [entry for entry in entries if secret in entry]


# --- provider errors that echo the key ---------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500])
@pytest.mark.parametrize("configured", [True, False], ids=["secrets-set", "no-secrets-set"])
@pytest.mark.parametrize("key", ["sk-live-0123456789abcdefXYZ", "plain-provider-key-0123456789"])
async def test_provider_error_echoing_the_key_never_reaches_the_log(
    fake: FakeOpenAI, lines: list[str], status: int, configured: bool, key: str
) -> None:
    settings = make_settings(fake.base_url, (key,), max_retries=1)
    if configured:
        set_secrets(collect_secrets(Settings(openai=settings)))
    else:
        logger.configure(patcher=redact_record)  # generic patterns only
    fake.fail_key(key, status)  # the body says "Incorrect API key provided: <the key>."
    model = OpenAICompatible(settings, backoff_factory=fast_backoff, retry_after_cap=0.05)
    try:
        with pytest.raises(AllAccountsFailed) as caught:
            await model.complete([ChatTurn("user", "hello")])
    finally:
        await model.close()
    logger.opt(exception=caught.value).error("request failed: {}", caught.value)
    assert any("acc1" in entry for entry in lines)
    assert leaked(key, lines) == []
    assert key not in str(caught.value)


async def test_check_output_names_no_key(fake: FakeOpenAI, lines: list[str]) -> None:
    key = "plain-provider-key-0123456789"
    fake.fail_key(key, 400)
    model = OpenAICompatible(make_settings(fake.base_url, (key,), max_retries=0), backoff_factory=fast_backoff)
    try:
        [(_, ok, detail)] = await model.check()
    finally:
        await model.close()
    assert not ok and key not in detail


# --- exceptions in tracebacks -------------------------------------------------------------------


def test_logged_exception_text_holding_a_secret_is_redacted(lines: list[str]) -> None:
    secret = "verify-key-0123456789"
    set_secrets([secret])
    try:
        try:
            raise KeyError(f"inner {secret}")
        except KeyError as inner:
            error = RuntimeError(f"Incorrect API key provided: {secret}")
            error.add_note(f"while sending Authorization: Bearer {secret}")
            raise error from inner
    except RuntimeError:
        logger.exception("request failed")
    [entry] = lines
    assert secret not in entry
    assert "Traceback" in entry and "RuntimeError" in entry and "KeyError" in entry
    assert f"Incorrect API key provided: {REDACTED}" in entry and "direct cause" in entry


def test_exception_group_members_are_redacted(lines: list[str]) -> None:
    secret = "group-secret-0123456789"
    set_secrets([secret])
    group = ExceptionGroup("several", [ValueError(f"one {secret}"), ValueError("two")])
    logger.opt(exception=group).error("tasks failed")
    [entry] = lines
    assert secret not in entry and "two" in entry


def test_harmless_exception_is_logged_unchanged(lines: list[str]) -> None:
    set_secrets(["unrelated-secret-value"])
    try:
        raise ValueError("just a bad value")
    except ValueError:
        logger.exception("failed")
    [entry] = lines
    assert "ValueError: just a bad value" in entry and "RedactedError" not in entry


def test_exception_whose_text_cannot_be_read_does_not_break_logging(lines: list[str]) -> None:
    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    set_secrets(["some-secret-value"])
    logger.opt(exception=Odd()).error("odd failure")
    assert lines and lines[0].startswith("odd failure")


# --- secrets in messages and URLs ---------------------------------------------------------------


def test_secret_in_a_url_query_is_redacted(lines: list[str]) -> None:
    token = "onebot-token-0123456789"
    odd = "p@ss/w+rd 0123"  # percent-encoded in URLs
    set_secrets([token, odd])
    logger.info("connecting to ws://127.0.0.1:3001/?access_token={}", token)
    logger.info("GET http://h/api?x=1&access_token={}&y=2", "p%40ss%2Fw%2Brd%200123")
    logger.info("GET http://h/api?token={}", "p%40ss%2Fw%2Brd+0123")
    assert leaked(token, lines) == [] and leaked("p%40ss", lines) == []
    assert lines[0] == f"connecting to ws://127.0.0.1:3001/?access_token={REDACTED}\n"
    assert lines[1] == f"GET http://h/api?x=1&access_token={REDACTED}&y=2\n"


def test_credential_looking_strings_are_redacted_without_configuration() -> None:
    assert redact("Authorization: Bearer abc.DEF-123_xyz") == f"Authorization: Bearer {REDACTED}"
    assert redact("Incorrect API key provided: sk-proj-AbCdEf123456.") == f"Incorrect API key provided: sk-{REDACTED}."
    assert redact("wss://x/events?token=abc123") == f"wss://x/events?token={REDACTED}"
    assert redact("QQBot tokenvalue123") == f"QQBot {REDACTED}"
    # our own advice and ordinary words are left alone
    assert redact("extraHeaders (Authorization: Bearer <token>)") == "extraHeaders (Authorization: Bearer <token>)"
    assert redact("a task-list and desk-drawer-items") == "a task-list and desk-drawer-items"


def test_very_short_secrets_are_not_redacted(lines: list[str]) -> None:
    # masking every "k1" in the log would make it unreadable and protects nothing
    set_secrets(["k1", "abc"])
    logger.info("account k1 answered abc")
    assert lines == ["account k1 answered abc\n"]


def test_secrets_accumulate_across_reloads(lines: list[str]) -> None:
    set_secrets(["old-secret-0123"])
    set_secrets(["new-secret-0123"])
    logger.info("old-secret-0123 new-secret-0123")
    assert lines == [f"{REDACTED} {REDACTED}\n"]


# --- collect_secrets ----------------------------------------------------------------------------

FULL = """\
[mirai]
qq = 1
api_key = "mirai-verify-key"
reverse_ws_port = 8554
reverse_ws_token = "mirai-reverse-token"

[onebot]
access_token = "onebot-access-token"
secret = "onebot-post-secret"
ws_url = "ws://127.0.0.1:3001/?access_token=token-in-url-query"

[milky]
access_token = "milky-access-token"

[satori]
token = "satori-token-value"

[qqbot]
appid = "1"
secret = "qqbot-app-secret"
token_url = "https://bots.qq.com/app/getAppAccessToken"

[[openai.accounts]]
api_key = "sk-first-account-key"
proxy = "socks5://user:proxy-password@127.0.0.1:1080"

[[openai.accounts]]
api_key = "second-account-key"

[database]
url = "postgresql+asyncpg://bot:database-password@db/bot"

[trigger]
mystery_token = "unknown-key-token"
"""


def test_collect_secrets_finds_every_configured_secret() -> None:
    found = collect_secrets(loads_config(FULL))
    expected = {
        "mirai-verify-key",
        "mirai-reverse-token",
        "onebot-access-token",
        "onebot-post-secret",
        "token-in-url-query",
        "milky-access-token",
        "satori-token-value",
        "qqbot-app-secret",
        "sk-first-account-key",
        "proxy-password",
        "second-account-key",
        "database-password",
        "unknown-key-token",
    }
    assert expected <= set(found)
    assert "https://bots.qq.com/app/getAppAccessToken" not in found  # a URL, not a secret
    assert "" not in found and len(found) == len(set(found))


def test_every_collected_secret_is_redacted_from_a_log_line(lines: list[str]) -> None:
    secrets = collect_secrets(loads_config(FULL))
    set_secrets(secrets)
    for secret in secrets:
        logger.warning("provider said: invalid credential {} (check config)", secret)
    assert all(REDACTED in entry for entry in lines)
    assert not any(secret in entry for secret in secrets for entry in lines)


# --- control characters -------------------------------------------------------------------------


def test_control_characters_in_logged_values_are_escaped(lines: list[str]) -> None:
    set_secrets([])
    logger.info("user said {}", "hi\n2024-01-01 00:00:00 | INFO | forged line")
    logger.info("group name {}", "\x1b[2J\x1b[Hcleared")
    assert lines == [
        "user said hi\\n2024-01-01 00:00:00 | INFO | forged line\n",
        "group name \\x1b[2J\\x1b[Hcleared\n",
    ]


# --- setup_logging ------------------------------------------------------------------------------


@pytest.fixture
def restore_handlers(redaction: None) -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)


def test_log_file_never_holds_a_secret(tmp_path: Path, restore_handlers: None) -> None:
    secret = "file-sink-secret-0123"
    log_file = tmp_path / "logs" / "bot.log"
    setup_logging("DEBUG", str(log_file), secrets=[secret])
    logger.info("key {}", secret)
    try:
        raise ValueError(f"echo {secret}")
    except ValueError:
        logger.exception("failed")
    logger.complete()
    logger.remove()  # flushes and closes the queued file sink
    text = log_file.read_text(encoding="utf-8")
    assert "key ***" in text and "Traceback" in text and secret not in text


def test_setup_logging_with_an_unusable_file_logs_to_the_console(
    tmp_path: Path, restore_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain.txt").write_text("x", encoding="utf-8")
    setup_logging("INFO", str(tmp_path / "plain.txt" / "bot.log"))  # the loader refuses this; a race is not fatal
    assert "cannot be used" in capsys.readouterr().err


# --- the ring the web console shows -------------------------------------------------------------


def _ring_texts(tag: str) -> list[str]:
    lines, _ = RING.recent()
    return [line.text for line in lines if tag in line.text]


def test_the_ring_holds_the_redacted_escaped_lines(restore_handlers: None) -> None:
    setup_logging("DEBUG", secrets=["ring-secret-0123"])
    logger.bind(adapter="onebot").info("ring-a key=ring-secret-0123 {}", "forged\nline\x1b[2J")
    try:
        raise OSError("ring-secret-0123 leaked")
    except OSError:
        logger.exception("ring-b failed")
    [line] = _ring_texts("ring-a")
    assert line.endswith("| INFO    | onebot ring-a key=*** forged\\nline\\x1b[2J")
    [entry] = _ring_texts("ring-b")
    assert "Traceback" in entry and "*** leaked" in entry and "ring-secret-0123" not in entry


async def test_setting_up_again_keeps_one_ring_sink_and_its_followers(restore_handlers: None) -> None:
    setup_logging("INFO", secrets=["first-secret-0123"])
    follower, _ = RING.follow()
    try:
        setup_logging("INFO", secrets=["second-secret-0123"])  # a reload
        setup_logging("WARNING")
        logger.info("ring-c below the new level")
        logger.warning("ring-c first-secret-0123 second-secret-0123")
        assert _ring_texts("ring-c") == [_ring_texts("ring-c")[0]]
        assert _ring_texts("ring-c")[0].endswith("ring-c *** ***")
        lines, dropped = await follower.next(1.0)
        assert [line.text for line in lines if "ring-c" in line.text] == _ring_texts("ring-c") and dropped == 0
    finally:
        RING.unfollow(follower)
