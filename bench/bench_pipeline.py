"""End-to-end benchmark of the bot process (fake Mirai -> bot -> fake OpenAI -> reply); Linux only, reads /proc."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import pstats
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import tomlkit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI, echo_last_user  # noqa: E402

T = TypeVar("T")

BOT_QQ = 10001
VERIFY_KEY = "bench-verify-key"
WARMUP_MESSAGES = 20
WARMUP_USER_BASE = 9_000_000  # warm-up users are separate, so measured conversations start empty
USER_BASE = 20_000
WARMUP_ID_BASE = 50_000_000
PROBE_MESSAGES = 50  # one message in flight: the bot's own latency, without queueing behind other users
PROBE_USER_BASE = 8_000_000
PROBE_ID_BASE = 40_000_000
REPLY_TIMEOUT = 30.0
PACED_SECONDS = 5.0  # the paced phase: messages at a steady rate the bot can sustain
PACED_USER_BASE = 7_000_000
PACED_ID_BASE = 30_000_000
STARTUP_TIMEOUT = 30.0
STOP_LIMIT = 5.0
POLL_SECONDS = 0.005
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_CPU_MS = 1.5  # non-stream replies
TARGET_STREAM_CPU_MS = 2.5  # a streamed answer of STREAM_TOKENS chunks
TARGET_ADDED_P50_MS = 4.0
STREAM_TOKENS = 64  # --stream: the fake model streams answers of this many content chunks ("tokens")
STREAM_CHUNK_CHARS = 2
PAD_CHAR = "嗯"
TARGET_RSS_MB = 100.0
TARGET_STARTUP_S = 1.5


def answer_to(prompt: str, stream: bool) -> str:
    """The fake model's answer to `prompt`: an echo, in stream mode padded to STREAM_TOKENS chunks."""
    echo = "echo: " + prompt
    if not stream:
        return echo
    return echo + PAD_CHAR * max(0, STREAM_TOKENS * STREAM_CHUNK_CHARS - len(echo))


class BenchMirai(FakeMirai):
    """FakeMirai that resolves a waiting future per reply instead of keeping a growing command list."""

    def __init__(self, url: str, verify_key: str, qq: int) -> None:
        super().__init__(url, verify_key, qq)
        self.pending: dict[tuple[int, str], asyncio.Future[float]] = {}
        self.unexpected: list[dict[str, Any]] = []  # replies nobody waited for (late, duplicated or wrong)
        self.other_commands = 0
        self.stream = False  # replies are answer_to(prompt, stream)

    def expect(self, user: int, text: str) -> asyncio.Future[float]:
        """A future set to the arrival time (perf_counter) of the bot's reply `text` to `user`."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending[(user, text)] = future
        return future

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            arrived = time.perf_counter()
            frame = json.loads(msg.data)
            command = frame.get("command", "")
            if command == "verify":
                await self._on_verify(ws, frame)
                continue
            reply: dict[str, Any] = {"code": 0, "msg": "success"}
            if command.startswith("send"):
                reply["messageId"] = next(self._message_ids)
            if command == "sendFriendMessage":
                key = (int(frame["content"]["target"]), sent_text(frame))
                future = self.pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(arrived)
                else:
                    self.unexpected.append(frame)
            else:
                self.other_commands += 1
            await ws.send_str(json.dumps({"syncId": frame["syncId"], "data": reply}))


@dataclass
class RunResult:
    """Figures of one benchmark run (one LLM latency)."""

    latency_ms: float
    messages: int
    users: int
    startup_s: float = math.nan
    wall_s: float = math.nan
    e2e_ms: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    paced_ms: list[float] = field(default_factory=list)
    paced_rate: float = 0.0
    cpu_s: float = math.nan
    cpu_main_s: float = math.nan
    bench_cpu_s: float = math.nan
    hwm_mb: float = math.nan
    rss_listening_mb: float = math.nan
    rss_before_mb: float = math.nan
    rss_after_mb: float = math.nan
    stop_s: float = math.nan
    exit_code: int | None = None
    killed: bool = False
    lost: int = 0
    unexpected: int = 0
    other_commands: int = 0
    stderr_problems: list[str] = field(default_factory=list)


# --- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) in seconds, from /proc/<pid>/stat."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the ")": state is field 3, so utime (14) and stime (15) are at indexes 11 and 12
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, key: str) -> float:
    """A `kB` line of /proc/<pid>/status (VmHWM, VmRSS, ...) in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


# --- set-up ------------------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, llm_url: str, port: int, stream: bool) -> Path:
    """A config.toml for a bot on 127.0.0.1 talking to the fake LLM, with a temp SQLite file."""
    presets = workdir / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "default.txt").write_text("system: 你是测试机器人。", encoding="utf-8")
    doc: dict[str, Any] = {
        "mirai": {"qq": BOT_QQ, "api_key": VERIFY_KEY, "reverse_ws_host": "127.0.0.1", "reverse_ws_port": port},
        "openai": {
            "accounts": [{"name": "main", "api_key": "sk-bench", "api_endpoint": llm_url, "model": "m1"}],
            "gpt_params": {"stream": stream, "timeout": 30},
        },
        "database": {"url": f"sqlite+aiosqlite:///{workdir / 'bot.sqlite3'}"},
        "presets": {"scan_dir": str(presets)},
        "log": {"level": "WARNING"},
        "response": {"max_queue_size": 0, "timeout": 60, "max_timeout": 90},
        "conversation": {"max_concurrency": 64},
    }
    path = workdir / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


async def spawn_bot(config: Path, stderr_path: Path, profile: Path | None) -> asyncio.subprocess.Process:
    """`python bot.py --config <path>`, optionally under `python -m cProfile -o <profile>`."""
    wrapper = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with stderr_path.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *wrapper,
            str(ROOT / "bot.py"),
            "--config",
            str(config),
            cwd=config.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )


async def wait_listening(process: asyncio.subprocess.Process, port: int) -> None:
    """Poll a TCP connect to the bot's port every 5 ms until it succeeds."""
    deadline = time.perf_counter() + STARTUP_TIMEOUT
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if process.returncode is not None:
                raise RuntimeError(f"the bot exited with code {process.returncode} during start-up") from None
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the bot was not listening after {STARTUP_TIMEOUT}s") from None
            await asyncio.sleep(POLL_SECONDS)
            continue
        writer.close()
        await writer.wait_closed()
        return


# --- load --------------------------------------------------------------------------------------


async def drive(
    mirai: BenchMirai,
    process: asyncio.subprocess.Process,
    total: int,
    users: int,
    user_base: int,
    id_base: int,
    tag: str,
) -> tuple[list[float], int]:
    """Closed loop: `users` conversations, each sends its next message when the previous reply arrives.

    Returns the end-to-end latency (seconds) of every answered message and the number of lost ones.
    Stops early if the bot process has exited.
    """
    seq: Iterator[int] = itertools.count()
    latencies: list[float] = []
    lost = 0

    async def conversation(user: int) -> None:
        nonlocal lost
        while (n := next(seq)) < total:
            text = f"{tag}{n} from {user}"
            future = mirai.expect(user, answer_to(text, mirai.stream))
            sent = time.perf_counter()
            await mirai.push(friend_message(user, text, id_base + n))
            try:
                arrived = await asyncio.wait_for(future, REPLY_TIMEOUT)
            except TimeoutError:
                mirai.pending.pop((user, "echo: " + text), None)
                lost += 1
                if process.returncode is not None:
                    return
                continue
            latencies.append(arrived - sent)

    await asyncio.gather(*(conversation(user_base + i) for i in range(users)))
    return latencies, lost


async def paced(mirai: BenchMirai, rate: float, users: int, seconds: float = PACED_SECONDS) -> tuple[list[float], int]:
    """Open loop: one message every 1/rate s, round robin over `users`, whatever the replies do.

    This is the latency a user sees when the bot is busy but not saturated.
    """
    count = max(1, int(rate * seconds))
    start = time.perf_counter()

    async def one(n: int) -> float | None:
        user = PACED_USER_BASE + n % users
        text = f"paced {n} from {user}"
        future = mirai.expect(user, answer_to(text, mirai.stream))
        sent = time.perf_counter()
        await mirai.push(friend_message(user, text, PACED_ID_BASE + n))
        try:
            return await asyncio.wait_for(future, REPLY_TIMEOUT) - sent
        except TimeoutError:
            mirai.pending.pop((user, "echo: " + text), None)
            return None

    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n)))
    answers = await asyncio.gather(*tasks)
    latencies = [a for a in answers if a is not None]
    return latencies, len(answers) - len(latencies)


async def stop_bot(process: asyncio.subprocess.Process, result: RunResult) -> None:
    """SIGTERM, then wait up to 5 s; kill it otherwise."""
    if process.returncode is not None:
        result.exit_code = process.returncode
        return
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_LIMIT)
    except TimeoutError:
        process.kill()
        await process.wait()
        result.killed = True
    result.stop_s = time.perf_counter() - started
    result.exit_code = process.returncode


def stderr_problems(path: Path) -> list[str]:
    """Non-empty lines of the bot's stderr (it logs at WARNING, so every line is worth a look)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


async def run_in_temp_folder(
    prefix: str, announce: str, run: Callable[[Path], Awaitable[T]], report: Callable[[T], None]
) -> int:
    """Run one benchmark in a temporary folder and print its report; 1 with the bot's stderr if it failed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        print(announce, file=sys.stderr, flush=True)
        try:
            result = await run(Path(tmp))
        except (RuntimeError, TimeoutError) as exc:
            # the bot failed to start or to answer the warm-up: its stderr says why
            print(f"bench failed: {exc!r}", file=sys.stderr)
            for line in stderr_problems(Path(tmp) / "bot.stderr")[-15:]:
                print(f"  {line}", file=sys.stderr)
            return 1
    report(result)
    return 0


def linux_only(name: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on Linux; the benchmarks read /proc."""
    if not sys.platform.startswith("linux"):
        print(f"{name} reads /proc and runs on Linux only", file=sys.stderr)
        return 2
    return asyncio.run(main())


async def run_one(
    latency_ms: float,
    messages: int,
    users: int,
    stream: bool,
    profile: Path | None,
    workdir: Path,
    paced_rate: float,
) -> RunResult:
    """One full run: fake LLM, bot process, warm-up, measured load, stop."""
    result = RunResult(latency_ms, messages, users)
    llm = FakeOpenAI(
        latency=latency_ms / 1000,
        reply_fn=lambda body: answer_to(echo_last_user(body).removeprefix("echo: "), stream),
        chunk_chars=STREAM_CHUNK_CHARS,
    )
    llm.record = False
    llm_url = await llm.start()
    port = free_port()
    config = write_config(workdir, llm_url, port, stream)
    stderr_path = workdir / "bot.stderr"
    spawned = time.perf_counter()
    process = await spawn_bot(config, stderr_path, profile)
    mirai = BenchMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    mirai.stream = stream
    try:
        await wait_listening(process, port)
        result.startup_s = time.perf_counter() - spawned
        result.rss_listening_mb = status_mb(process.pid, "VmRSS")
        await mirai.connect(timeout=10)

        warm_users = min(users, 10)
        warm = (WARMUP_MESSAGES, warm_users, WARMUP_USER_BASE, WARMUP_ID_BASE, "warm ")
        _, warm_lost = await drive(mirai, process, *warm)
        result.lost += warm_lost
        probe, probe_lost = await drive(mirai, process, PROBE_MESSAGES, 1, PROBE_USER_BASE, PROBE_ID_BASE, "probe ")
        result.probe_ms = [x * 1000 for x in probe]
        result.lost += probe_lost
        result.paced_rate = paced_rate
        paced_latencies, paced_lost = await paced(mirai, paced_rate, users)
        result.paced_ms = [x * 1000 for x in paced_latencies]
        result.lost += paced_lost

        pid = process.pid
        result.rss_before_mb = status_mb(pid, "VmRSS")
        cpu_before, main_before = cpu_seconds(pid), cpu_seconds(pid, pid)
        bench_before = time.process_time()
        started = time.perf_counter()
        latencies, lost = await drive(mirai, process, messages, users, USER_BASE, 1, "msg ")
        result.wall_s = time.perf_counter() - started
        result.cpu_s = cpu_seconds(pid) - cpu_before
        result.cpu_main_s = cpu_seconds(pid, pid) - main_before
        result.bench_cpu_s = time.process_time() - bench_before
        result.hwm_mb = status_mb(pid, "VmHWM")
        result.rss_after_mb = status_mb(pid, "VmRSS")
        result.e2e_ms = [x * 1000 for x in latencies]
        result.lost += lost
        await asyncio.sleep(0.2)  # let any late or duplicated reply arrive before counting
        result.unexpected = len(mirai.unexpected)
        result.other_commands = mirai.other_commands
        await stop_bot(process, result)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
            result.killed = True
        await mirai.close()
        await llm.stop()
    result.stderr_problems = stderr_problems(stderr_path)
    return result


# --- report ------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def verdict(value: float, limit: float) -> str:
    if math.isnan(value):
        return "?"
    return "PASS" if value <= limit else "MISS"


def print_table(results: list[RunResult], stream: bool) -> None:
    """One row per figure, one column per LLM latency, the target at the right."""
    mode = f"stream ({STREAM_TOKENS} content chunks per answer)" if stream else "json"
    first = results[0]
    print(f"\nbench_pipeline: {first.messages} messages, {first.users} users (closed loop), LLM replies as {mode}")
    headers = [f"LLM {r.latency_ms:g} ms" for r in results]
    rows: list[tuple[str, list[str], str]] = []

    def row(name: str, values: list[float], fmt: str, target: str = "", limit: float | None = None) -> None:
        cells = []
        for value in values:
            cell = format(value, fmt) if not math.isnan(value) else "-"
            if limit is not None:
                cell += f" {verdict(value, limit)}"
            cells.append(cell)
        rows.append((name, cells, target))

    row("messages/s", [r.messages / r.wall_s for r in results], ".0f")
    for pct in (50, 90, 99):
        row(f"end-to-end p{pct} (ms)", [percentile(r.e2e_ms, pct) for r in results], ".2f")
    row("end-to-end max (ms)", [max(r.e2e_ms, default=math.nan) for r in results], ".2f")
    for pct in (50, 90, 99):
        added = [percentile([x - r.latency_ms for x in r.e2e_ms], pct) for r in results]
        row(f"added by bot p{pct} (ms)", added, ".2f")
    for pct in (50, 90, 99):
        added = [percentile([x - r.latency_ms for x in r.paced_ms], pct) for r in results]
        limit = TARGET_ADDED_P50_MS if pct == 50 else None
        name = f"  paced {first.paced_rate:g}/s p{pct} (ms)"
        row(name, added, ".2f", f"<= {TARGET_ADDED_P50_MS:g}" if limit else "", limit)
    for pct in (50, 90, 99):
        added = [percentile([x - r.latency_ms for x in r.probe_ms], pct) for r in results]
        row(f"  1 in flight p{pct} (ms)", added, ".2f")
    cpu_ms = [r.cpu_s * 1000 / r.messages for r in results]
    cpu_target = TARGET_STREAM_CPU_MS if stream else TARGET_CPU_MS
    row("bot CPU / message (ms)", cpu_ms, ".2f", f"<= {cpu_target:g}", cpu_target)
    row("  main thread (ms)", [r.cpu_main_s * 1000 / r.messages for r in results], ".2f")
    row("  other threads (ms)", [(r.cpu_s - r.cpu_main_s) * 1000 / r.messages for r in results], ".2f")
    row("bot CPU use (% of 1 core)", [100 * r.cpu_s / r.wall_s for r in results], ".0f")
    row("bench's own CPU (% of 1 core)", [100 * r.bench_cpu_s / r.wall_s for r in results], ".0f")
    row("RSS at listening (MB)", [r.rss_listening_mb for r in results], ".1f")
    row("RSS before run (MB)", [r.rss_before_mb for r in results], ".1f")
    row("RSS after run (MB)", [r.rss_after_mb for r in results], ".1f", f"<= {TARGET_RSS_MB:g}", TARGET_RSS_MB)
    row("peak RSS VmHWM (MB)", [r.hwm_mb for r in results], ".1f")
    startup = [r.startup_s for r in results]
    row("start-up to listening (s)", startup, ".3f", f"<= {TARGET_STARTUP_S:g}", TARGET_STARTUP_S)
    row("stop after SIGTERM (s)", [r.stop_s for r in results], ".3f", f"<= {STOP_LIMIT:g}", STOP_LIMIT)
    row("lost replies", [float(r.lost) for r in results], ".0f", "0")
    row("unexpected/dup replies", [float(r.unexpected) for r in results], ".0f", "0")
    row("bot exit code", [float(r.exit_code) if r.exit_code is not None else math.nan for r in results], ".0f", "0")

    name_width = max(len(name) for name, _, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells, _ in rows)) for i, h in enumerate(headers)]
    print(f"{'':<{name_width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)) + "  target")
    for name, cells, target in rows:
        line = f"{name:<{name_width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"{line}  {target}".rstrip())
    print(
        f"note: '1 in flight' rows: {PROBE_MESSAGES} messages from one user sent one at a time after the warm-up"
        " (no queueing behind other users); 'paced' rows: messages at a steady rate over PACED_SECONDS (busy, not"
        " saturated: the added-latency target applies here); 'end-to-end' and 'added by bot' rows are under the"
        " closed-loop load, where a CPU-bound bot adds queueing delay of about users / throughput."
    )
    print(
        "note: each user's history grows during the run (one exchange per message), so later messages read and"
        " send more history; figures include that. Added latency = end-to-end minus the configured LLM latency."
    )
    for r in results:
        if r.killed:
            print(f"WARNING: LLM {r.latency_ms:g} ms: the bot did not stop within {STOP_LIMIT:g}s and was killed")
        if r.other_commands:
            print(f"note: LLM {r.latency_ms:g} ms: the bot sent {r.other_commands} commands other than replies")
        if r.stderr_problems:
            print(f"bot stderr (LLM {r.latency_ms:g} ms, {len(r.stderr_problems)} lines, first 10):")
            for line in r.stderr_problems[:10]:
                print(f"  {line}")


def print_profile(path: Path, top: int = 25) -> None:
    """The top functions of the bot's cProfile dump, by cumulative and by own time."""
    print(f"\n===== cProfile of the bot process: {path} (main thread only, whole process life) =====")
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        print(f"\n--- top {top} by {key} ---")
        stats.sort_stats(key).print_stats(top)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the bot process end to end (Linux only).")
    parser.add_argument("--messages", type=int, default=2000, help="measured messages per run (default 2000)")
    parser.add_argument("--users", type=int, default=50, help="concurrent conversations (default 50)")
    parser.add_argument("--latency-ms", default="0,50", help="comma-separated LLM latencies, one run each")
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s of the paced phase (default 100)")
    parser.add_argument("--stream", action="store_true", help="ask the model for streamed (SSE) replies")
    parser.add_argument(
        "--profile", type=Path, default=None, help="run the bot under cProfile, dump to PATH (suffixed per latency)"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.users < 1:
        parser.error("--messages and --users must be positive")
    return args


async def main_async(args: argparse.Namespace) -> int:
    latencies = [float(x) for x in args.latency_ms.split(",") if x.strip()]
    results: list[RunResult] = []
    profiles: list[Path] = []
    for latency in latencies:
        profile: Path | None = None
        if args.profile is not None:
            profile = args.profile
            if len(latencies) > 1:
                profile = profile.with_name(f"{profile.stem}-{latency:g}ms{profile.suffix}")
            profiles.append(profile)
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            print(f"run: LLM latency {latency:g} ms ...", file=sys.stderr, flush=True)
            results.append(
                await run_one(latency, args.messages, args.users, args.stream, profile, Path(tmp), args.rate)
            )
    print_table(results, args.stream)
    if profiles:
        print("note: under cProfile the bot is several times slower; use the figures above only to compare.")
        for path in profiles:
            print_profile(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):
        print("bench_pipeline reads /proc and runs on Linux only", file=sys.stderr)
        return 2
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
