"""Benchmark (not a test): time to build a model request for a session with 100,000 stored messages."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llm.base import ChatTurn  # noqa: E402
from llm.openai_compat import _messages  # noqa: E402
from storage.models import messages as table  # noqa: E402
from storage.store import SqlHistoryStore  # noqa: E402

TARGET_MS = 5.0
SESSION = "qq:private:10001"
BATCH = 2000


async def fill(store: SqlHistoryStore, messages: int, other_sessions: int) -> None:
    """`messages` rows in the measured session, and as many again spread over other sessions."""
    engine = store.engine

    text_user = "请帮我看看这段话有没有语病：今天天气很好，我们一起去公园散步吧。" * 2
    text_reply = "这段话没有语病，表达清楚自然。如果想更生动，可以加一些细节描写。" * 3
    now = time.time()
    async with engine.begin() as conn:
        for start in range(0, messages, BATCH):
            rows = []
            for n in range(start, min(start + BATCH, messages)):
                user = n % 2 == 0
                text = text_user if user else text_reply
                rows.append(
                    {
                        "session_key": SESSION,
                        "role": "user" if user else "assistant",
                        "content": text,
                        "tokens": 60 if user else 80,
                        "hidden": False,
                        "created_at": now,
                    }
                )
                rows.append({**rows[-1], "session_key": f"qq:private:{20000 + n % other_sessions}"})
            await conn.execute(table.insert(), rows)


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bot.sqlite3'}"
        store = await SqlHistoryStore.open(url)
        started = time.perf_counter()
        await fill(store, args.messages, args.sessions)
        print(
            f"stored {args.messages:,} messages in the session (+{args.messages:,} in {args.sessions} others) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        preset = [ChatTurn("system", "你是一个聊天机器人。")]
        timings: list[float] = []
        window_len = 0
        for _ in range(args.rounds):
            began = time.perf_counter()
            history = await store.window(SESSION, args.budget)
            turns = [*preset, *(ChatTurn(t.role, t.content) for t in history), ChatTurn("user", "新的问题")]  # type: ignore[arg-type]
            _messages(turns, vision=False)
            timings.append((time.perf_counter() - began) * 1000)
            window_len = len(history)
        await store.close()
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    verdict = "ok" if p50 <= TARGET_MS else "MISS"
    print(f"history budget {args.budget} tokens -> {window_len} turns in the request")
    print(f"build request: p50 {p50:.2f} ms ({verdict}, target <= {TARGET_MS:g} ms)", end="  ")
    print(f"p99 {p99:.2f} ms  max {timings[-1]:.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages stored in the measured session")
    parser.add_argument("--sessions", type=int, default=500, help="other sessions sharing the table")
    parser.add_argument("--budget", type=int, default=3000, help="history budget in tokens (max_tokens - min_tokens)")
    parser.add_argument("--rounds", type=int, default=300)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
