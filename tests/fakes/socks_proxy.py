"""A minimal SOCKS5 proxy on 127.0.0.1 (no auth or RFC 1929 username/password, CONNECT only) for tests."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

_VERSION = 5
_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_ACCEPTABLE_METHOD = 0xFF
_CONNECT = 0x01
_IPV4 = 0x01
_DOMAIN = 0x03
# RFC 1928 reply codes
_SUCCEEDED = 0x00
_CONNECTION_REFUSED = 0x05
_COMMAND_NOT_SUPPORTED = 0x07
_ADDRESS_TYPE_NOT_SUPPORTED = 0x08


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """One CONNECT as the client sent it: `by_name` is true for a domain name, false for an IPv4 address."""

    host: str
    port: int
    by_name: bool


def _reply(code: int) -> bytes:
    # the bound address is meaningless for CONNECT through a test proxy, so it is always 0.0.0.0:0
    return bytes([_VERSION, code, 0, _IPV4]) + bytes(6)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or error, then close the other side; HTTP never needs a half-closed tunnel."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class FakeSocks5:
    """Accepts SOCKS5 clients, records each CONNECT in `requests`, and pipes bytes to the target.

    With `username` and `password` set only RFC 1929 authentication is offered, and a wrong pair is
    refused (counted in `auth_failures`); otherwise only the no-authentication method is.
    """

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self._credentials = None if username is None else (username.encode(), (password or "").encode())
        self.requests: list[ConnectRequest] = []
        self.auth_failures = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen on 127.0.0.1 on a free port and return the port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop listening and tear down every client and tunnel."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            target = await self._negotiate(reader, writer)
            if target is None:
                return
            try:
                upstream_reader, upstream = await asyncio.open_connection(*target)
            except OSError:
                writer.write(_reply(_CONNECTION_REFUSED))
                await writer.drain()
                return
            self._writers.add(upstream)
            writer.write(_reply(_SUCCEEDED))
            await writer.drain()
            await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, OSError):
            pass  # the client hung up mid-handshake
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._handlers.discard(task)

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        """Method selection, authentication and the CONNECT request; the target, or None if refused."""
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != _VERSION:
            return None
        method = _NO_AUTH if self._credentials is None else _USER_PASS
        if method not in methods:
            writer.write(bytes([_VERSION, _NO_ACCEPTABLE_METHOD]))
            await writer.drain()
            return None
        writer.write(bytes([_VERSION, method]))
        if method == _USER_PASS:
            auth_version, user_length = await reader.readexactly(2)
            user = await reader.readexactly(user_length)
            password = await reader.readexactly((await reader.readexactly(1))[0])
            accepted = auth_version == 1 and (user, password) == self._credentials
            writer.write(bytes([1, 0 if accepted else 1]))  # RFC 1929: any non-zero status is a failure
            await writer.drain()
            if not accepted:
                self.auth_failures += 1
                return None

        version, command, _reserved, address_type = await reader.readexactly(4)
        if address_type == _IPV4:
            host, by_name = socket.inet_ntoa(await reader.readexactly(4)), False
        elif address_type == _DOMAIN:
            host, by_name = (await reader.readexactly((await reader.readexactly(1))[0])).decode("ascii"), True
        else:
            writer.write(_reply(_ADDRESS_TYPE_NOT_SUPPORTED))
            await writer.drain()
            return None
        port = int.from_bytes(await reader.readexactly(2), "big")
        if version != _VERSION or command != _CONNECT:
            writer.write(_reply(_COMMAND_NOT_SUPPORTED))
            await writer.drain()
            return None
        self.requests.append(ConnectRequest(host, port, by_name))
        return host, port
