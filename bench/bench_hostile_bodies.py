"""Memory under hostile webhook traffic: many parallel oversized bodies must not make the bot buffer them.

Starts the bot (`python bot.py`, its own process) with the OneBot HTTP POST webhook and the Milky
webhook, then sends `--clients` parallel unauthenticated POSTs of `--size` MB to each, both with a
Content-Length and chunked, and compares the bot's peak RSS (VmHWM) with its RSS before. Before the
1 MB cap, 40 posts of 16 MB took the bot from 99 to 655 MB (14 MB a post). Linux only (reads /proc).
Targets: the peak grows by at most the 1 MB cap per post, whatever the posts' size; every post gets a
4xx (never a 5xx, none refused); /healthz still answers afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

import tomlkit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

CAP_MB = 1.0  # the webhook body cap: no post may cost the bot more than that


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def post(port: int, size: int, chunked: bool, extra_header: str = "") -> int:
    """One unauthenticated POST of `size` bytes; the status line's code (0 when the bot cut us off,
    -1 when it refused the connection)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return -1
    head = f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra_header}"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    try:
        writer.write(head.encode())
        piece = b"[" * (1024 * 1024)
        sent = 0
        while sent < size:
            data = piece[: min(len(piece), size - sent)]
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await writer.drain()
            sent += len(data)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the bot refused the body part-way: what we want
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1]) if line else 0
    except (ConnectionError, TimeoutError, IndexError, ValueError):
        return 0
    finally:
        writer.close()


async def healthz(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split()[1])


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40, help="parallel posts per listener and kind")
    parser.add_argument("--size", type=int, default=16, help="MB per post")
    args = parser.parse_args()
    llm = FakeOpenAI()
    await llm.start()
    with tempfile.TemporaryDirectory() as folder:
        onebot_port, milky_port, web_port = free_port(), free_port(), free_port()
        config = {
            "onebot": {
                "http_url": "http://127.0.0.1:9",  # nothing there: only the webhook listener matters here
                "http_post_host": "127.0.0.1",
                "http_post_port": onebot_port,
                "secret": "webhook-secret",
            },
            "milky": {
                "url": "http://127.0.0.1:9",
                "event_transport": "webhook",
                "webhook_host": "127.0.0.1",
                "webhook_port": milky_port,
                "access_token": "milky-token",
            },
            "openai": {"accounts": [{"api_key": "sk-bench", "api_endpoint": llm.base_url, "model": "m"}]},
            "database": {"url": f"sqlite+aiosqlite:///{folder}/bot.sqlite3"},
            "log": {"level": "ERROR"},
            "web": {"port": web_port},
        }
        path = Path(folder) / "config.toml"
        path.write_text(tomlkit.dumps(config), encoding="utf-8")
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bot.py"), "--config", str(path), cwd=folder, stderr=asyncio.subprocess.PIPE
        )
        try:
            for port in (web_port, onebot_port, milky_port):  # the web server starts before the platforms
                for _ in range(600):
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.close()
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
            before = status_mb(process.pid, "VmRSS")
            started = time.monotonic()
            size = args.size * 1024 * 1024
            # OneBot's posts carry a wrong signature, which can only be checked on the whole body: they are
            # read up to the 1 MB cap. Milky's carry no token and are refused before their body is read.
            wrong_signature = "X-Signature: sha1=" + "0" * 40 + "\r\n"
            posts = [
                post(port, size, chunked, wrong_signature if port == onebot_port else "")
                for port in (onebot_port, milky_port)
                for chunked in (False, True)
                for _ in range(args.clients)
            ]
            statuses = await asyncio.gather(*posts)
            elapsed = time.monotonic() - started
            peak = status_mb(process.pid, "VmHWM")
            after = status_mb(process.pid, "VmRSS")
            health = await healthz(web_port)
        finally:
            process.terminate()
            await process.wait()
    await llm.stop()
    growth = peak - before
    server_errors = sum(1 for status in statuses if status >= 500)
    answered = sum(1 for status in statuses if 400 <= status < 500)
    print(f"{len(statuses)} posts of {args.size} MB ({args.clients} per listener and kind) in {elapsed:.1f}s")
    refused = statuses.count(-1)
    cut = statuses.count(0)
    print(f"answered 4xx: {answered}, cut off: {cut}, refused at connect: {refused}, 5xx: {server_errors}")
    print(f"RSS before {before:.1f} MB, peak {peak:.1f} MB, after {after:.1f} MB")
    per_post = growth / len(statuses)
    ok_growth = per_post <= CAP_MB
    verdict = "PASS" if ok_growth else "MISS"
    print(f"peak growth {growth:.1f} MB, {per_post:.2f} MB a post (target <= {CAP_MB:.0f} MB): {verdict}")
    print(f"no 5xx, none refused: {'PASS' if server_errors == 0 and refused == 0 else 'MISS'}")
    print(f"/healthz afterwards: {health} {'PASS' if health in (200, 503) else 'MISS'}")
    return 0 if ok_growth and server_errors == 0 and refused == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
