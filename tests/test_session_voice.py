"""The per-session voice (切换语音) as the console's session list and one session's summary show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.browse import HistoryBrowser, SessionSummary
from storage.store import SqlHistoryStore


@pytest.mark.parametrize("fast_path", [True, False])
async def test_the_session_list_and_summary_carry_the_voice(tmp_path: Path, fast_path: bool) -> None:
    store = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}", driver_fast_path=fast_path)
    try:
        await store.append_exchange("qq:private:1", "q", "r", now=10.0)
        await store.append_exchange("qq:private:2", "q", "r", now=20.0)
        await store.update_session("qq:private:1", voice="xiaoxiao", reply_mode="mixed")
        browser = HistoryBrowser(store.engine)
        listed = {summary.key: summary for summary in (await browser.sessions()).sessions}
        assert (listed["qq:private:1"].voice, listed["qq:private:1"].reply_mode) == ("xiaoxiao", "mixed")
        assert listed["qq:private:2"].voice == ""
        one = await browser.session("qq:private:1")
        assert one is not None and (one.voice, one.messages) == ("xiaoxiao", 2)
    finally:
        await store.close()


def test_a_summary_built_without_a_voice_follows_the_configured_one() -> None:
    # The console builds summaries of sessions without a sessions row positionally, without the voice.
    assert SessionSummary("web:x", 0.0, "", "", "", "", 0, 0).voice == ""
