"""Every listener's guards, through real sockets: body cap, 400 not 5xx, raw header bytes, connection cap,
slow headers, and accept() failures (EMFILE) logged once a minute rather than once a second per listener."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from adapters.listen import bearer_token, listen, listener_app, secret_matches

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret"


async def echo_body(request: web.Request) -> web.Response:
    if not secret_matches(bearer_token(request, "access_token"), TOKEN):
        return web.Response(status=401)
    body = await request.read()
    return web.Response(text=str(len(body)))


async def broken(request: web.Request) -> web.Response:
    raise TypeError("a handler bug")


Serve = Callable[..., "asyncio.Future[tuple[web.AppRunner, int]]"]


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., object]]:
    runners: list[web.AppRunner] = []

    async def start(max_body: int = 1024, **kwargs: object) -> int:
        app = listener_app(max_body)
        app.router.add_post("/body", echo_body)
        app.router.add_post("/broken", broken)
        runner, port = await listen(app, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def raw_request(port: int, data: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5) if read else b""
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_a_body_over_the_cap_is_refused_before_it_is_sent(server: Callable[..., object]) -> None:
    port = await server()  # type: ignore[misc]
    head = f"POST /body HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000000\r\n\r\n"
    # No body follows: the answer must not wait for 100 MB to arrive.
    assert status_of(await raw_request(port, head.encode())) == 413


async def test_a_chunked_body_over_the_cap_is_cut_off(server: Callable[..., object]) -> None:
    port = await server()  # type: ignore[misc]
    chunk = b"x" * 800
    head = f"POST /body HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    assert status_of(await raw_request(port, head.encode() + body)) == 413


async def test_a_handler_bug_is_a_400_and_the_next_request_works(
    server: Callable[..., object], log_lines: list[str]
) -> None:
    port = await server()  # type: ignore[misc]
    response = await raw_request(port, b"POST /broken HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status_of(response) == 400
    assert any("could not be handled" in line and "a handler bug" in line for line in log_lines)
    ok = f"POST /body HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\nhi".encode()
    response = await raw_request(port, ok)
    assert status_of(response) == 200 and response.endswith(b"2")


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe", b"\xff", b"Bearer s3cre\xff", b"Token \xc3\x28", b"Bearer " + TOKEN.encode() + b"\x80"],
)
async def test_any_bytes_in_the_authorization_header_are_a_401(
    server: Callable[..., object], authorization: bytes
) -> None:
    port = await server()  # type: ignore[misc]
    request = b"POST /body HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\nContent-Length: 0\r\n\r\n"
    assert status_of(await raw_request(port, request)) == 401


async def test_connections_over_the_cap_are_closed(server: Callable[..., object], log_lines: list[str]) -> None:
    port = await server(max_connections=3, header_timeout=60)  # type: ignore[misc]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0)  # let the server see them
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once, nothing served
    writer.close()
    assert any("over 3 open" in line for line in log_lines)
    for _, w in held:
        w.close()


async def test_a_client_that_stalls_its_headers_is_cut_off(server: Callable[..., object]) -> None:
    port = await server(header_timeout=0.3)  # type: ignore[misc]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /body HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # A client that sends its request in time is served on the same kind of listener.
    ok = f"POST /body HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode()
    assert status_of(await raw_request(port, ok)) == 200


EMFILE_SERVER = textwrap.dedent(
    """
    import asyncio, resource, sys
    sys.path.insert(0, sys.argv[1])
    from loguru import logger
    from aiohttp import web
    from adapters.listen import listen, listener_app
    from core.loop import quiet_repeated_loop_errors

    async def main():
        logger.remove()
        logger.add(sys.stdout, format="{level} {message}", level="DEBUG")
        loop = asyncio.get_running_loop()
        quiet_repeated_loop_errors(loop)
        reported = []
        handler = loop.get_exception_handler()
        def counting(loop, context):
            reported.append(context.get("message"))
            handler(loop, context)
        loop.set_exception_handler(counting)
        runner, port = await listen(listener_app(), "127.0.0.1", 0, header_timeout=60)
        # Allow only a few more descriptors than are open now: accept() then fails with EMFILE.
        import os
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        print("PORT", port, flush=True)
        while len(reported) < 3:
            await asyncio.sleep(0.05)
        print("REPORTED", len(reported), flush=True)
        await runner.cleanup()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_NOFILE")
async def test_accept_failing_with_emfile_is_logged_once_a_minute(tmp_path: Path) -> None:
    script = tmp_path / "emfile_server.py"
    script.write_text(EMFILE_SERVER, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    port = int(line.split()[1])
    clients = []
    try:
        for _ in range(10):  # more connections than descriptors are left: the server's accept() fails
            clients.append(await asyncio.open_connection("127.0.0.1", port))
        output = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
    finally:
        for _, writer in clients:
            writer.close()
        if process.returncode is None:
            process.kill()
        await process.wait()
    reported = int(output.split("REPORTED ")[1].split()[0])
    assert reported >= 3  # asyncio reports every failed accept() (over a hundred here)
    assert output.count("out of system resource") == 1, output  # one line said it
