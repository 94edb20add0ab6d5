"""Memory benchmark: thousands of users each send one message within a minute; RSS then and after idle; Linux only."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra_path in (ROOT, ROOT / "bench"):
    if str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))

from bench_pipeline import (  # noqa: E402
    BOT_QQ,
    VERIFY_KEY,
    BenchMirai,
    RunResult,
    free_port,
    linux_only,
    paced,
    percentile,
    run_in_temp_folder,
    spawn_bot,
    status_mb,
    stderr_problems,
    stop_bot,
    wait_listening,
    write_config,
)

from tests.fakes.mirai_peer import friend_message  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

WARMUP_USER = 9_900_000  # a separate user, so lazy imports of the first request are in the baseline
WARMUP_ID = 59_000_000
WARMUP_TIMEOUT = 30.0
TARGET_RSS_MB = 100.0
POLL_S = 1.0  # RSS sampling period during the idle wait


@dataclass
class MemoryResult:
    """Figures of one run."""

    users: int
    seconds: float
    idle_wait_s: float
    answered: int = 0
    lost: int = 0
    unexpected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    send_wall_s: float = math.nan
    rss_listening_mb: float = math.nan
    rss_before_mb: float = math.nan
    rss_after_mb: float = math.nan
    hwm_mb: float = math.nan
    rss_idle_mb: float = math.nan
    rss_idle_min_mb: float = math.nan
    stop: RunResult = field(default_factory=lambda: RunResult(0.0, 0, 0))
    stderr: list[str] = field(default_factory=list)


async def run_memory(users: int, seconds: float, idle_wait_s: float, latency_s: float, workdir: Path) -> MemoryResult:
    """Fake model and bot; each user sends one message, paced over `seconds`; RSS after the answers and idle."""
    result = MemoryResult(users, seconds, idle_wait_s)
    llm = FakeOpenAI(latency=latency_s)
    llm.record = False
    llm_url = await llm.start()
    port = free_port()
    config = write_config(workdir, llm_url, port, stream=False)
    stderr_path = workdir / "bot.stderr"
    process = await spawn_bot(config, stderr_path, None)
    mirai = BenchMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    try:
        await wait_listening(process, port)
        pid = process.pid
        result.rss_listening_mb = status_mb(pid, "VmRSS")
        await mirai.connect(timeout=10)
        warm = mirai.expect(WARMUP_USER, "echo: warm")
        await mirai.push(friend_message(WARMUP_USER, "warm", WARMUP_ID))
        await asyncio.wait_for(warm, WARMUP_TIMEOUT)
        result.rss_before_mb = status_mb(pid, "VmRSS")

        rate = users / seconds
        started = time.perf_counter()
        # paced() sends int(rate * seconds) messages round robin over `users`; the half message keeps float
        # rounding from dropping the last user, so every user sends exactly one
        latencies, lost = await paced(mirai, rate, users, seconds=(users + 0.5) / rate)
        result.send_wall_s = time.perf_counter() - started
        result.rss_after_mb = status_mb(pid, "VmRSS")
        result.hwm_mb = status_mb(pid, "VmHWM")
        result.latencies_ms = [x * 1000 for x in latencies]
        result.answered, result.lost = len(latencies), lost

        # bounded wait past the bot's idle-worker timeout, sampling RSS to see whether it falls
        print(f"waiting {idle_wait_s:g} s for idle workers to end ...", file=sys.stderr, flush=True)
        lowest = result.rss_after_mb
        deadline = time.perf_counter() + idle_wait_s
        while (left := deadline - time.perf_counter()) > 0 and process.returncode is None:
            await asyncio.sleep(min(POLL_S, left))
            lowest = min(lowest, status_mb(pid, "VmRSS"))
        result.rss_idle_mb = status_mb(pid, "VmRSS")
        result.rss_idle_min_mb = min(lowest, result.rss_idle_mb)
        result.unexpected = len(mirai.unexpected)
        await stop_bot(process, result.stop)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
            result.stop.killed = True
        for future in mirai.pending.values():
            future.cancel()
        await mirai.close()
        await llm.stop()
    result.stderr = stderr_problems(stderr_path)
    return result


def pass_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(r: MemoryResult) -> None:
    """The figures, then the target with PASS or MISS."""
    per_session_kb = (r.rss_after_mb - r.rss_before_mb) * 1024 / r.users
    per_session_idle_kb = (r.rss_idle_mb - r.rss_before_mb) * 1024 / r.users
    after_ok = r.rss_after_mb <= TARGET_RSS_MB and r.lost == 0
    idle_ok = r.rss_idle_mb <= TARGET_RSS_MB
    print(f"\nbench_sessions_memory: {r.users} users, one private message each, paced over {r.seconds:g} s")
    rows = [
        ("sending took (s)", f"{r.send_wall_s:.1f}"),
        ("answered", f"{r.answered}"),
        ("lost", f"{r.lost}"),
        ("unexpected or duplicated replies", f"{r.unexpected}"),
        ("latency p50 / p99 / max (ms)", " / ".join(f"{v:.0f}" for v in _spread(r.latencies_ms))),
        ("RSS at listening (MB)", f"{r.rss_listening_mb:.1f}"),
        ("RSS before the users, warm (MB)", f"{r.rss_before_mb:.1f}"),
        ("RSS after the last answer (MB)", f"{r.rss_after_mb:.1f}"),
        ("peak RSS VmHWM (MB)", f"{r.hwm_mb:.1f}"),
        ("RSS per active session (KB)", f"{per_session_kb:.1f}"),
        (f"RSS after {r.idle_wait_s:g} s idle (MB)", f"{r.rss_idle_mb:.1f} (lowest {r.rss_idle_min_mb:.1f})"),
        ("RSS per session after idle (KB)", f"{per_session_idle_kb:.1f}"),
        ("bot exit code after SIGTERM", f"{r.stop.exit_code}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    targets = [
        (f"RSS <= {TARGET_RSS_MB:g} MB after the {r.users} users ({r.rss_after_mb:.1f} MB)", after_ok),
        (f"RSS <= {TARGET_RSS_MB:g} MB after the idle wait ({r.rss_idle_mb:.1f} MB)", idle_ok),
    ]
    print("targets:")
    for label, ok in targets:
        print(f"  {label:<56} {pass_miss(ok)}")
    if r.lost:
        print("note: some messages had no answer, so the memory figures cover fewer sessions than intended")
    if r.stop.killed:
        print("WARNING: the bot did not stop after SIGTERM and was killed")
    if r.stderr:
        print(f"bot stderr ({len(r.stderr)} lines, first 10):")
        for line in r.stderr[:10]:
            print(f"  {line}")


def _spread(values: list[float]) -> list[float]:
    return [percentile(values, 50), percentile(values, 99), max(values, default=math.nan)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Memory of the bot after many users each send one message.")
    parser.add_argument("--users", type=int, default=4000, help="users, one message each (default 4000)")
    parser.add_argument("--seconds", type=float, default=50.0, help="spread the messages over this many s (50)")
    parser.add_argument(
        "--idle-wait", type=float, default=65.0, help="seconds to wait after the last answer (default 65)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="fake model seconds per answer (default 0)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.seconds <= 0 or args.idle_wait < 0 or args.latency < 0:
        parser.error("--users and --seconds must be positive, --idle-wait and --latency >= 0")
    return args


async def main_async(args: argparse.Namespace) -> int:
    async def run(folder: Path) -> Any:
        return await run_memory(args.users, args.seconds, args.idle_wait, args.latency, folder)

    return await run_in_temp_folder(
        "bench-memory-", f"run: {args.users} users over {args.seconds:g} s ...", run, print_report
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return linux_only("bench_sessions_memory", lambda: main_async(args))


if __name__ == "__main__":
    sys.exit(main())
