"""Burst benchmark: many users send one private message at the same moment to a slow fake model; Linux only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

ROOT = Path(__file__).resolve().parent.parent
for extra_path in (ROOT, ROOT / "bench"):
    if str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))

from bench_pipeline import (  # noqa: E402
    BOT_QQ,
    VERIFY_KEY,
    BenchMirai,
    RunResult,
    cpu_seconds,
    free_port,
    linux_only,
    percentile,
    run_in_temp_folder,
    spawn_bot,
    status_mb,
    stderr_problems,
    stop_bot,
    wait_listening,
    write_config,
)

from tests.fakes.mirai_peer import friend_message, sent_text  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

USER_BASE = 30_000_000
ID_BASE = 60_000_000
WARMUP_USER = 9_900_000  # a separate user, so the first request's lazy imports are not in the burst figures
WARMUP_ID = 59_000_000
SLACK_S = 1.5  # what the bot may add on top of the model's latency, per the target
TARGET_RSS_MB = 150.0
LATE_GRACE_S = 1.0  # after the last answer, how long duplicated or late replies may still arrive
SAMPLE_S = 0.05  # RSS sampling period (VmHWM also covers peaks between samples)


@dataclass
class BurstResult:
    """Figures of one burst."""

    users: int
    latency_s: float
    concurrency: int
    account_key_known: bool
    timeout_s: float
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    other_replies: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    push_s: float = math.nan
    wall_s: float = math.nan
    rss_before_mb: float = math.nan
    rss_peak_mb: float = math.nan
    hwm_mb: float = math.nan
    rss_after_mb: float = math.nan
    bot_cpu_s: float = math.nan
    bench_cpu_s: float = math.nan
    stop: RunResult = field(default_factory=lambda: RunResult(0.0, 0, 0))
    stderr: list[str] = field(default_factory=list)


def account_concurrency_known() -> bool:
    """Whether this tree's config already knows `[[openai.accounts]] max_concurrency` (else it only warns)."""
    from core.config import OpenAIAccount

    return "max_concurrency" in OpenAIAccount.model_fields


def write_burst_config(workdir: Path, llm_url: str, port: int, concurrency: int, timeout_s: float) -> Path:
    """bench_pipeline's config with every concurrency setting raised; unknown keys only produce a warning."""
    path = write_config(workdir, llm_url, port, stream=False)
    doc: Any = tomlkit.parse(path.read_text(encoding="utf-8"))
    doc["conversation"]["max_concurrency"] = concurrency
    doc["openai"]["accounts"][0]["max_concurrency"] = concurrency
    # the bench waits `timeout_s` past the model's latency, so the bot's own limits must not cut answers sooner;
    # its "still thinking" or queued notices, if any, are counted as other replies
    doc["response"]["timeout"] = timeout_s
    doc["response"]["max_timeout"] = timeout_s + 30
    doc["openai"]["gpt_params"]["timeout"] = timeout_s
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    """Keep the highest VmRSS seen in `peak[0]` until `stop` is set."""
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], status_mb(pid, "VmRSS"))
        except OSError:
            return  # the bot has exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def run_burst(users: int, latency_s: float, concurrency: int, timeout_s: float, workdir: Path) -> BurstResult:
    """Start the fake model and the bot, send one message from each of `users` users at once, count the replies."""
    result = BurstResult(users, latency_s, concurrency, account_concurrency_known(), timeout_s)
    llm = FakeOpenAI(latency=latency_s)
    llm.record = False
    llm_url = await llm.start()
    port = free_port()
    config = write_burst_config(workdir, llm_url, port, concurrency, timeout_s)
    stderr_path = workdir / "bot.stderr"
    process = await spawn_bot(config, stderr_path, None)
    mirai = BenchMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    stop_sampling = asyncio.Event()
    sampler: asyncio.Task[None] | None = None
    try:
        await wait_listening(process, port)
        await mirai.connect(timeout=10)
        warm = mirai.expect(WARMUP_USER, "echo: warm")
        await mirai.push(friend_message(WARMUP_USER, "warm", WARMUP_ID))
        await asyncio.wait_for(warm, latency_s + timeout_s)

        pid = process.pid
        result.rss_before_mb = status_mb(pid, "VmRSS")
        peak = [result.rss_before_mb]
        sampler = asyncio.create_task(sample_rss(pid, peak, stop_sampling))
        cpu_before, bench_before = cpu_seconds(pid), time.process_time()

        expected: dict[tuple[int, str], asyncio.Future[float]] = {}
        sent_at: dict[tuple[int, str], float] = {}
        started = time.perf_counter()
        # one frame after another on the single Mirai socket, as fast as it takes them: "at once" for the bot
        for i in range(users):
            user, text = USER_BASE + i, f"burst {i}"
            key = (user, "echo: " + text)
            expected[key] = mirai.expect(user, key[1])
            sent_at[key] = time.perf_counter()
            await mirai.push(friend_message(user, text, ID_BASE + i))
        result.push_s = time.perf_counter() - started
        # bounded: every answer has latency + timeout_s from the end of sending
        await asyncio.wait(expected.values(), timeout=latency_s + timeout_s)
        result.wall_s = time.perf_counter() - started
        answered = {key: future.result() for key, future in expected.items() if future.done()}
        result.answered = len(answered)
        result.lost = users - result.answered
        result.latencies_s = [arrived - sent_at[key] for key, arrived in answered.items()]
        await asyncio.sleep(LATE_GRACE_S)  # a grace for late duplicates, not a measurement

        result.bot_cpu_s = cpu_seconds(pid) - cpu_before
        result.bench_cpu_s = time.process_time() - bench_before
        stop_sampling.set()
        await sampler
        result.rss_peak_mb = peak[0]
        result.hwm_mb = status_mb(pid, "VmHWM")
        result.rss_after_mb = status_mb(pid, "VmRSS")
        seen: Counter[tuple[int, str]] = Counter()
        for frame in mirai.unexpected:
            key = (int(frame["content"]["target"]), sent_text(frame))
            if key in answered:
                seen[key] += 1
            else:
                result.other_replies.append(f"{key[0]}: {key[1][:80]}")
        result.duplicated = sum(seen.values())
        await stop_bot(process, result.stop)
    finally:
        stop_sampling.set()
        if sampler is not None:
            await asyncio.gather(sampler, return_exceptions=True)
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


def print_report(r: BurstResult) -> None:
    """The figures, then each target with PASS or MISS."""
    ms = [x * 1000 for x in r.latencies_s]
    limit_s = r.latency_s + SLACK_S
    key_note = "known key" if r.account_key_known else "not a key yet in this tree: it only warns"
    print(f"\nbench_burst: {r.users} users, one private message each at once; fake model {r.latency_s:g} s per answer")
    print(f"  [conversation] max_concurrency = {r.concurrency}; [[openai.accounts]] max_concurrency = {r.concurrency}")
    print(f"  ({key_note})")
    print(f"sent all messages in          {r.push_s * 1000:.0f} ms")
    print(f"answered                      {r.answered}")
    print(f"lost                          {r.lost}  (no answer within {r.latency_s + r.timeout_s:g} s)")
    print(f"duplicated                    {r.duplicated}")
    print(f"other replies (notices, errors) {len(r.other_replies)}")
    for pct in (50, 90, 99):
        print(f"latency p{pct} (ms)              {percentile(ms, pct):.0f}")
    worst = max(ms, default=math.nan)
    print(f"latency max (ms)              {worst:.0f}")
    print(f"RSS before burst (MB)         {r.rss_before_mb:.1f}")
    print(f"RSS peak, sampled (MB)        {r.rss_peak_mb:.1f}")
    print(f"RSS peak VmHWM (MB)           {r.hwm_mb:.1f}")
    print(f"RSS after (MB)                {r.rss_after_mb:.1f}")
    if r.users:
        print(f"bot CPU / message (ms)        {r.bot_cpu_s * 1000 / r.users:.2f}")
    print(f"bench's own CPU (s)           {r.bench_cpu_s:.2f}  (fake Mirai + fake model share this process)")
    print(f"bot stopped after SIGTERM in  {r.stop.stop_s:.2f} s, exit code {r.stop.exit_code}")
    all_in_time = r.lost == 0 and not math.isnan(worst) and worst <= limit_s * 1000
    peak = max(r.hwm_mb, r.rss_peak_mb) if not math.isnan(r.hwm_mb) else r.rss_peak_mb
    targets = [
        (f"none lost or duplicated ({r.lost} lost, {r.duplicated} duplicated)", r.lost == 0 and r.duplicated == 0),
        (f"every answer within {r.latency_s:g} + {SLACK_S:g} s (max {worst / 1000:.2f} s)", all_in_time),
        (f"RSS peak <= {TARGET_RSS_MB:g} MB ({peak:.1f} MB)", peak <= TARGET_RSS_MB),
    ]
    print("targets:")
    for label, ok in targets:
        print(f"  {label:<56} {pass_miss(ok)}")
    if r.stop.killed:
        print("WARNING: the bot did not stop after SIGTERM and was killed")
    if r.other_replies:
        print("other replies (first 5):")
        for line in r.other_replies[:5]:
            print(f"  {line}")
    if r.stderr:
        print(f"bot stderr ({len(r.stderr)} lines, first 10):")
        for line in r.stderr[:10]:
            print(f"  {line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Burst benchmark: N users write at once to a slow model.")
    parser.add_argument("--users", type=int, default=1000, help="users, one message each (default 1000)")
    parser.add_argument("--latency", type=float, default=2.0, help="fake model seconds per answer (default 2)")
    parser.add_argument("--concurrency", type=int, default=1000, help="max_concurrency written (default 1000)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds after the model latency before a reply counts lost"
    )
    args = parser.parse_args(argv)
    if args.users < 1 or args.concurrency < 1 or args.latency < 0 or args.timeout <= 0:
        parser.error("--users and --concurrency must be positive, --latency >= 0, --timeout > 0")
    return args


async def main_async(args: argparse.Namespace) -> int:
    async def run(folder: Path) -> Any:
        return await run_burst(args.users, args.latency, args.concurrency, args.timeout, folder)

    return await run_in_temp_folder(
        "bench-burst-", f"run: {args.users} users at once, model {args.latency:g} s ...", run, print_report
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return linux_only("bench_burst", lambda: main_async(args))


if __name__ == "__main__":
    sys.exit(main())
