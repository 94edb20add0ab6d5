"""Benchmark (not a test): the history store and four bot processes against a real PostgreSQL.

Starts a throwaway PostgreSQL (tests/dbservers.py), loads N messages (default 10 million), then measures:
1. the window read of a session holding 100,000 of them (target p50 < 5 ms);
2. `append_exchange` on PostgreSQL against a SQLite file (target: PostgreSQL p50 - SQLite p50 <= 2 ms);
3. four `python bot.py` processes on that database under load: every message answered exactly once
   (a share delivered to two processes at once), and the per-user hourly limit exact across processes.
Linux only; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy
import tomlkit
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
for extra_path in (ROOT, ROOT / "bench"):
    if str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))

from bench_pipeline import (  # noqa: E402
    BOT_QQ,
    VERIFY_KEY,
    RunResult,
    free_port,
    linux_only,
    percentile,
    spawn_bot,
    stderr_problems,
    stop_bot,
    wait_listening,
)

from core.config import RatelimitSettings  # noqa: E402
from storage.admin import AdminStore  # noqa: E402
from storage.store import SqlHistoryStore  # noqa: E402
from tests.dbservers import PostgresServer, ServerUnavailable  # noqa: E402
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

TARGET_WINDOW_P50_MS = 5.0
TARGET_WRITE_EXTRA_MS = 2.0
DATABASE = "bench_history"
MEASURED_SESSION = "qq:private:10001"
OTHER_SESSION_BASE = 1_000_000
LOAD_CHUNK = 500_000  # rows per INSERT ... SELECT statement
LOAD_PARALLEL = 2  # loading sessions at once
WINDOW_INDEX = "ix_messages_session_key_id"
USER_TEXT = "请帮我看看这段话有没有语病：今天天气很好，我们一起去公园散步吧。"
REPLY_TEXT = "这段话没有语病，表达清楚自然。如果想更生动，可以加一些细节描写，比如公园里的花和树。"
WRITE_SESSION = "qq:private:10002"
WARMUP_CALLS = 20
PROCESSES = 4
USER_BASE = 3_000_000
MESSAGE_ID_BASE = 60_000_000
REPLY_TIMEOUT = 30.0
QUIET_SECONDS = 1.0  # no reply for this long after the last one: no late duplicate is coming
QUIET_LIMIT = 15.0
EXCEED_TEXT = RatelimitSettings().exceed
ECHO = "echo: "
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers")
WARNING_START = RatelimitSettings().warning_msg.strip()[:8]  # "警告：额度即将耗尽"


# --- machine and server --------------------------------------------------------------------------


def machine_facts() -> str:
    """One line: CPU, cores, memory, Python and library versions."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    except OSError:
        mem_gb = float("nan")
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, Python {platform.python_version()},"
        f" SQLAlchemy {sqlalchemy.__version__}"
    )


class BenchPostgres(PostgresServer):
    """The tests' throwaway PostgreSQL; with `durable` it keeps PostgreSQL's own defaults
    (fsync, synchronous_commit, full_page_writes on) instead of the tests' speed settings."""

    def __init__(self, durable: bool) -> None:
        super().__init__()
        self.durable = durable

    def server_argv(self) -> list[str]:
        argv = super().server_argv()
        if not self.durable:
            return argv
        fast = {"fsync=off", "synchronous_commit=off", "full_page_writes=off"}
        kept: list[str] = []
        for arg in argv:
            if arg in fast:
                kept.pop()  # the "-c" before it
            else:
                kept.append(arg)
        return kept


def start_server(durable: bool) -> BenchPostgres:
    """Start PostgreSQL (stopped again at exit by the server class)."""
    server = BenchPostgres(durable)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


# --- 1. load and window ------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    """N rows: the measured session holds rows g with g % every in (0, 1), the rest spread over `others`."""

    total: int
    measured: int
    others: int

    @property
    def every(self) -> int:
        return max(2, 2 * self.total // max(1, self.measured))

    def chunks(self) -> Iterator[tuple[int, int]]:
        for low in range(0, self.total, LOAD_CHUNK):
            yield low, min(self.total, low + LOAD_CHUNK) - 1


INSERT_CHUNK = text(
    """
    INSERT INTO messages (session_key, role, content, tokens, hidden, created_at)
    SELECT CASE WHEN g % CAST(:every AS bigint) < 2 THEN CAST(:measured AS text)
                ELSE 'qq:private:' || (CAST(:other_base AS bigint) + g % CAST(:others AS bigint)) END,
           CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
           CASE WHEN g % 2 = 0 THEN CAST(:user_text AS text) ELSE CAST(:reply_text AS text) END,
           CASE WHEN g % 2 = 0 THEN 60 ELSE 80 END,
           false,
           CAST(:start AS double precision) + g * 0.001
    FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) AS g
    """
)

INSERT_SESSIONS = text(
    """
    INSERT INTO sessions (session_key, updated_at)
    SELECT 'qq:private:' || (CAST(:other_base AS bigint) + n), CAST(:now AS double precision)
    FROM generate_series(0, CAST(:others AS bigint) - 1) AS n
    UNION ALL SELECT CAST(:measured AS text), CAST(:now AS double precision)
    """
)


async def load(store: SqlHistoryStore, plan: LoadPlan) -> float:
    """Fill the messages table server-side (window index dropped during the load, rebuilt after, ANALYZE);
    returns the seconds taken."""
    engine = store.engine
    started = time.perf_counter()
    now = time.time()
    async with engine.begin() as conn:
        definition = await conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": WINDOW_INDEX}
        )
        await conn.execute(text(f"DROP INDEX {WINDOW_INDEX}"))
        common = {"other_base": OTHER_SESSION_BASE, "others": plan.others, "measured": MEASURED_SESSION, "now": now}
        await conn.execute(INSERT_SESSIONS, common)
    gate = asyncio.Semaphore(LOAD_PARALLEL)
    params = {
        **{k: v for k, v in common.items() if k != "now"},
        "every": plan.every,
        "user_text": USER_TEXT,
        "reply_text": REPLY_TEXT,
        "start": now - plan.total * 0.001,
    }

    async def one(low: int, high: int) -> None:
        async with gate, engine.begin() as conn:
            await conn.execute(INSERT_CHUNK, {**params, "low": low, "high": high})
        print(f"  loaded rows up to {high + 1:,}", file=sys.stderr, flush=True)

    await asyncio.gather(*(one(low, high) for low, high in plan.chunks()))
    async with engine.begin() as conn:
        await conn.execute(text("SET maintenance_work_mem = '512MB'"))
        await conn.execute(text(str(definition)))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


async def time_calls(calls: int, call: Any) -> list[float]:
    """Milliseconds of each of `calls` awaits of `call()`, after WARMUP_CALLS unmeasured ones."""
    for _ in range(WARMUP_CALLS):
        await call()
    timings = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        timings.append((time.perf_counter() - began) * 1000)
    return timings


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


async def bench_window(store: SqlHistoryStore, calls: int, budget: int) -> bool:
    turns = len(await store.window(MEASURED_SESSION, budget))
    timings = await time_calls(calls, lambda: store.window(MEASURED_SESSION, budget))
    p50 = statistics.median(timings)
    print(
        f"window read ({budget} tokens -> {turns} turns, {calls} calls): p50 {p50:.2f} ms"
        f"  p95 {percentile(timings, 95):.2f} ms  max {max(timings):.2f} ms"
        f"  -> {verdict(p50 < TARGET_WINDOW_P50_MS)} (target p50 < {TARGET_WINDOW_P50_MS:g} ms)"
    )
    return p50 < TARGET_WINDOW_P50_MS


async def window_many_sessions(store: SqlHistoryStore, plan: LoadPlan, calls: int, budget: int) -> None:
    """For information: `calls` different sessions, each read once (their pages not read before)."""
    timings = []
    for n in range(min(calls, plan.others)):
        began = time.perf_counter()
        await store.window(f"qq:private:{OTHER_SESSION_BASE + n}", budget)
        timings.append((time.perf_counter() - began) * 1000)
    size = (plan.total - plan.total * 2 // plan.every) // plan.others
    print(
        f"  (for information) {len(timings)} other sessions of ~{size:,} messages, each read once:"
        f" p50 {statistics.median(timings):.2f} ms  p95 {percentile(timings, 95):.2f} ms  max {max(timings):.2f} ms"
    )


# --- 2. write path ---------------------------------------------------------------------------------


async def append_timings(store: SqlHistoryStore, calls: int) -> list[float]:
    return await time_calls(calls, lambda: store.append_exchange(WRITE_SESSION, USER_TEXT, REPLY_TEXT))


async def bench_writes(postgres: SqlHistoryStore, calls: int, workdir: Path) -> bool:
    sqlite = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{workdir / 'write.sqlite3'}")
    try:
        lite = await append_timings(sqlite, calls)
    finally:
        await sqlite.close()
    pg = await append_timings(postgres, calls)
    extra = statistics.median(pg) - statistics.median(lite)
    for name, timings in (("SQLite file", lite), ("PostgreSQL", pg)):
        print(
            f"append_exchange on {name} ({calls} calls): p50 {statistics.median(timings):.2f} ms"
            f"  p95 {percentile(timings, 95):.2f} ms  max {max(timings):.2f} ms"
        )
    ok = extra <= TARGET_WRITE_EXTRA_MS
    print(
        f"write path added by PostgreSQL: p50 {extra:+.2f} ms -> {verdict(ok)} (target <= {TARGET_WRITE_EXTRA_MS:g} ms)"
    )
    return ok


# --- 3. four bot processes -----------------------------------------------------------------------------


class Replies:
    """Every answer the bots sent, per user, from all fake Mirai peers; the rate-limit warnings sent
    after an answer are only counted."""

    def __init__(self) -> None:
        self.by_user: dict[int, list[str]] = defaultdict(list)
        self.total = 0  # answers (echo or exceed), not the rate-limit warnings
        self.warnings = 0
        self._changed: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self._any = asyncio.Event()

    def add(self, user: int, reply: str) -> None:
        if reply.startswith(WARNING_START):  # follows an answer when the limit is nearly used
            self.warnings += 1
            return
        self.by_user[user].append(reply)
        self.total += 1
        self._changed[user].set()
        self._any.set()

    async def wait_for(self, user: int, count: int, timeout: float) -> bool:
        """Wait until `user` has at least `count` replies; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        changed = self._changed[user]
        while len(self.by_user[user]) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return len(self.by_user[user]) >= count
        return True

    async def until_quiet(self) -> None:
        """Poll until no reply came for QUIET_SECONDS (at most QUIET_LIMIT): late duplicates show up."""
        deadline = time.monotonic() + QUIET_LIMIT
        while time.monotonic() < deadline:
            self._any.clear()
            try:
                await asyncio.wait_for(self._any.wait(), QUIET_SECONDS)
            except TimeoutError:
                return


class CollectingMirai(FakeMirai):
    """A fake mirai-api-http that hands each friend reply to a shared `Replies` instead of keeping commands."""

    def __init__(self, url: str, replies: Replies) -> None:
        super().__init__(url, VERIFY_KEY, BOT_QQ)
        self.replies = replies

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            command = frame.get("command", "")
            if command == "verify":
                await self._on_verify(ws, frame)
                continue
            reply: dict[str, Any] = {"code": 0, "msg": "success"}
            if command.startswith("send"):
                reply["messageId"] = next(self._message_ids)
            if command == "sendFriendMessage":
                self.replies.add(int(frame["content"]["target"]), sent_text(frame))
            await ws.send_str(json.dumps({"syncId": frame["syncId"], "data": reply}))


def write_bot_config(workdir: Path, n: int, llm_url: str, database_url: str, port: int) -> Path:
    """Config of bot process `n`: its own Mirai port, the shared PostgreSQL (the file holds its password)."""
    presets = workdir / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "default.txt").write_text("system: 你是测试机器人。", encoding="utf-8")
    doc: dict[str, Any] = {
        "mirai": {"qq": BOT_QQ, "api_key": VERIFY_KEY, "reverse_ws_host": "127.0.0.1", "reverse_ws_port": port},
        "openai": {
            "accounts": [{"name": "main", "api_key": "sk-bench", "api_endpoint": llm_url, "model": "m1"}],
            "gpt_params": {"stream": False, "timeout": 30},
        },
        "database": {"url": database_url},
        "presets": {"scan_dir": str(presets)},
        "log": {"level": "WARNING"},
        "response": {"max_queue_size": 0, "timeout": 60, "max_timeout": 90},
        "conversation": {"max_concurrency": 64},
        "web": {"enable": False},
    }
    path = workdir / f"bot{n}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass
class LoadShape:
    users: int
    per_user: int
    limit: int
    concurrent: int
    dup_every: int  # every this many messages is delivered to two processes at once
    pipelined: bool  # a user sends all messages without waiting for replies


@dataclass
class Tally:
    lost: int = 0
    duplicated: int = 0
    wrong_echo: int = 0  # echo replies to text the user never sent
    others: int = 0
    users_over: int = 0
    users_under: int = 0
    sent: int = 0
    doubled: int = 0
    timeouts: int = 0
    warnings: int = 0
    most_answered: int = 0  # the most echo answers one user got
    stderr: list[str] = field(default_factory=list)


def tally(replies: Replies, sent: dict[int, list[str]], shape: LoadShape, result: Tally) -> None:
    """Per user: one reply per message; exactly `limit` echo answers, the rest the exceed text."""
    for user, texts in sent.items():
        got = replies.by_user.get(user, [])
        echoes = Counter(r.removeprefix(ECHO) for r in got if r.startswith(ECHO))
        exceeded = sum(1 for r in got if r == EXCEED_TEXT)
        result.others += len(got) - sum(echoes.values()) - exceeded
        result.wrong_echo += sum(n for t, n in echoes.items() if t not in texts)
        result.duplicated += sum(n - 1 for n in echoes.values()) + max(0, len(got) - len(texts))
        result.lost += max(0, len(texts) - len(got))
        answered = sum(echoes.values())
        result.users_over += answered > shape.limit
        result.users_under += answered < shape.limit
        result.most_answered = max(result.most_answered, answered)


async def drive_users(peers: list[CollectingMirai], replies: Replies, shape: LoadShape, result: Tally) -> None:
    """Each user sends `per_user` messages round-robin over the processes; some reach two processes at once."""
    gate = asyncio.Semaphore(shape.concurrent)
    sent: dict[int, list[str]] = {}

    async def deliver(user: int, i: int) -> None:
        number = (user - USER_BASE) * shape.per_user + i
        message = f"第{i}条 msg {i} from {user}"
        sent[user].append(message)
        event = friend_message(user, message, MESSAGE_ID_BASE + number)
        target = (user + i) % len(peers)
        pushes = [peers[target].push(event)]
        if number % shape.dup_every == 0:
            pushes.append(peers[(target + 1) % len(peers)].push(event))
            result.doubled += 1
        result.sent += 1
        await asyncio.gather(*pushes)

    async def user_loop(user: int) -> None:
        sent[user] = []
        async with gate:
            for i in range(shape.per_user):
                await deliver(user, i)
                if not shape.pipelined and not await replies.wait_for(user, i + 1, REPLY_TIMEOUT):
                    result.timeouts += 1
            if shape.pipelined and not await replies.wait_for(user, shape.per_user, REPLY_TIMEOUT):
                result.timeouts += 1

    await asyncio.gather(*(user_loop(USER_BASE + u) for u in range(shape.users)))
    await replies.until_quiet()
    result.warnings = replies.warnings
    tally(replies, sent, shape, result)


async def bench_processes(database_url: str, shape: LoadShape, workdir: Path) -> bool:
    """Four bot processes on one database; True when nothing was lost or duplicated and the limit held."""
    llm = FakeOpenAI()
    llm.record = False
    llm_url = await llm.start()
    replies = Replies()
    processes: list[asyncio.subprocess.Process] = []
    peers: list[CollectingMirai] = []
    result = Tally()
    try:
        for n in range(PROCESSES):
            port = free_port()
            config = write_bot_config(workdir, n, llm_url, database_url, port)
            process = await spawn_bot(config, workdir / f"bot{n}.stderr", None)
            processes.append(process)
            await wait_listening(process, port)
            peer = CollectingMirai(f"ws://127.0.0.1:{port}/", replies)
            await peer.connect(timeout=10)
            peers.append(peer)
        for n, peer in enumerate(peers):  # one warm-up message each (lazy imports), from users of their own
            await peer.push(friend_message(USER_BASE - 1 - n, "warm up", MESSAGE_ID_BASE - 1 - n))
            if not await replies.wait_for(USER_BASE - 1 - n, 1, REPLY_TIMEOUT):
                raise RuntimeError(f"bot process {n} did not answer the warm-up message")
        started = time.perf_counter()
        await drive_users(peers, replies, shape, result)
        wall = time.perf_counter() - started - QUIET_SECONDS
    finally:
        for process in processes:  # before the peers hang up, so no bot logs a lost connection
            await stop_bot(process, RunResult(0, 0, 0))
        for peer in peers:
            await peer.close()
        await llm.stop()
    for n in range(len(processes)):
        result.stderr += [f"bot{n}: {line}" for line in stderr_problems(workdir / f"bot{n}.stderr")]
    return report_processes(shape, result, wall)


def report_processes(shape: LoadShape, result: Tally, wall: float) -> bool:
    mode = "all at once" if shape.pipelined else "one at a time, waiting for each reply"
    print(
        f"{PROCESSES} bot processes: {shape.users} users x {shape.per_user} messages ({mode}, {shape.concurrent} users"
        f" at a time), {result.doubled} of {result.sent} delivered to two processes; limit {shape.limit}/hour per user"
    )
    print(f"throughput: {result.sent / wall:.0f} messages/s over {wall:.1f} s (answers and exceed replies)")
    exact_once = result.lost == 0 and result.duplicated == 0 and result.wrong_echo == 0 and result.others == 0
    print(
        f"answered exactly once: lost {result.lost}, duplicated {result.duplicated}, wrong {result.wrong_echo},"
        f" other replies {result.others} -> {verdict(exact_once)}"
    )
    limit_exact = result.users_over == 0 and result.users_under == 0
    print(
        f"rate limit exact ({shape.limit} answers per user): users over {result.users_over},"
        f" under {result.users_under}, most for one user {result.most_answered} -> {verdict(limit_exact)}"
    )
    print(f"rate-limit warnings sent after answers: {result.warnings} (for information)")
    if result.timeouts:
        print(f"note: {result.timeouts} waits for a reply timed out after {REPLY_TIMEOUT:g} s")
    if result.stderr:
        print(f"bot stderr ({len(result.stderr)} lines, first 10):")
        for line in result.stderr[:10]:
            print(f"  {line}")
    return exact_once and limit_exact


# --- main ------------------------------------------------------------------------------------------


def print_bot_stderr(workdir: Path) -> None:
    """The last lines each bot process wrote to stderr."""
    for path in sorted(workdir.glob("bot*.stderr")):
        for line in stderr_problems(path)[-10:]:
            print(f"  {path.stem}: {line}", file=sys.stderr)


async def server_facts(store: SqlHistoryStore) -> str:
    """The server's version and durability settings, as the server reports them."""
    async with store.engine.connect() as conn:
        shown = [f"{name}={await conn.scalar(text(f'SHOW {name}'))}" for name in DURABILITY]
        return f"PostgreSQL {await conn.scalar(text('SHOW server_version'))}: {', '.join(shown)}"


async def run(args: argparse.Namespace, server: BenchPostgres, workdir: Path) -> int:
    url = server.create_database(DATABASE)
    store = await SqlHistoryStore.open(url)
    results: list[bool] = []
    try:
        print(await server_facts(store))
        plan = LoadPlan(args.messages, min(args.session_messages, args.messages), args.sessions)
        seconds = await load(store, plan)
        async with store.engine.connect() as conn:
            stored = int(await conn.scalar(text("SELECT count(*) FROM messages")) or 0)
        print(
            f"loaded {plan.total:,} messages (table holds {stored:,};"
            f" {plan.total * 2 // plan.every:,} in the measured session, the rest over"
            f" {plan.others:,} sessions) in {seconds:.0f} s"
        )
        results.append(await bench_window(store, args.calls, args.budget))
        await window_many_sessions(store, plan, args.calls, args.budget)
        results.append(await bench_writes(store, args.writes, workdir))
        admin = AdminStore(store.engine)
        await admin.set_limit("user", "default", args.limit)
        await admin.close()
    finally:
        await store.close()
    shape = LoadShape(args.users, args.per_user, args.limit, args.concurrent, args.dup_every, args.pipelined)
    try:
        results.append(await bench_processes(url, shape, workdir))
    except (RuntimeError, TimeoutError) as exc:  # a bot failed to start or to answer: its stderr says why
        print(f"bot processes failed: {exc!r}", file=sys.stderr)
        print_bot_stderr(workdir)
        return 1
    print(f"overall: {sum(results)} of {len(results)} targets PASS")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Scale figures against a real PostgreSQL (Linux only).")
    parser.add_argument("--messages", type=int, default=10_000_000, help="messages stored (default 10,000,000)")
    parser.add_argument("--quick", action="store_true", help="200,000 messages, for a fast check")
    parser.add_argument("--session-messages", type=int, default=100_000, help="of them in the measured session")
    parser.add_argument("--sessions", type=int, default=10_000, help="other sessions sharing the table")
    parser.add_argument("--budget", type=int, default=3000, help="window budget in tokens (default 3000)")
    parser.add_argument("--calls", type=int, default=200, help="measured window reads (default 200)")
    parser.add_argument("--writes", type=int, default=500, help="measured append_exchange calls per database")
    parser.add_argument("--users", type=int, default=200, help="users sending to the bot processes (default 200)")
    parser.add_argument("--per-user", type=int, default=8, help="messages each user sends (default 8)")
    parser.add_argument("--limit", type=int, default=5, help="default per-user limit, messages/hour (default 5)")
    parser.add_argument("--concurrent", type=int, default=50, help="users sending at the same time (default 50)")
    parser.add_argument("--dup-every", type=int, default=5, help="every Nth message goes to two processes at once")
    parser.add_argument("--pipelined", action="store_true", help="each user sends all messages without waiting")
    parser.add_argument("--durable", action="store_true", help="PostgreSQL's own fsync/commit defaults")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = 200_000
    if min(args.messages, args.calls, args.writes, args.users, args.per_user, args.concurrent, args.dup_every) < 1:
        parser.error("counts must be positive")
    return args


async def main_async(args: argparse.Namespace) -> int:
    print(machine_facts())
    try:
        server = start_server(args.durable)
    except ServerUnavailable as exc:
        print(f"bench_database: {exc} (apt-get install postgresql)", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="bench-database-") as tmp:
            return await run(args, server, Path(tmp))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return linux_only("bench_database", lambda: main_async(args))


if __name__ == "__main__":
    sys.exit(main())
