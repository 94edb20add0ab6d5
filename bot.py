"""Entry point and composition root: arguments, config, build the bot, run until a signal."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from adapters.base import Adapter, AdapterStatus
from adapters.registry import adapter_factory
from core.config import Settings, collect_secrets, load_config, platform_names
from core.errors import BotError, ConfigError
from core.log import setup_logging
from core.loop import quiet_repeated_loop_errors
from core.metrics import Metrics

if TYPE_CHECKING:
    from tools.mcp import MCPTools

EXIT_CONFIG = 2
EXIT_START = 1
STOP_SECONDS = 4.0


class App:
    """The running bot: storage, model, conversation manager and one adapter per platform section."""

    def __init__(self, settings: Settings, console: bool = False) -> None:
        self.settings = settings
        self.console = console
        self.adapters: dict[str, Adapter] = {}
        self._closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        # Set when every platform has stopped for good: the process then exits 1 so that Docker or
        # systemd restarts it (a running bot is always a connected or listening one).
        self.all_stopped = asyncio.Event()
        self.stopped_reason = ""
        self.ready = False  # every part exists (the web console waits for this)
        self.mcp: MCPTools | None = None
        self.metrics = Metrics()
        self.metrics.links = lambda: [
            (status.instance, link.name, link.healthy) for status in self.statuses() for link in status.links
        ]

    def statuses(self) -> list[AdapterStatus]:
        """Every platform's links, as data."""
        return [adapter.status() for adapter in self.adapters.values() if adapter.counts_for_health]

    def _platform_stopped(self) -> None:
        statuses = self.statuses()
        if statuses and all(status.stopped for status in statuses):
            self.stopped_reason = "; ".join(
                f"{status.instance}: {link.reason}" for status in statuses for link in status.links
            )
            self.all_stopped.set()

    async def start(self) -> None:
        """Open the database, build everything and start the adapters; raises BotError."""
        from conversation.manager import ConversationManager
        from conversation.presets import PresetBook
        from llm.openai_compat import OpenAICompatible
        from storage.admin import AdminStore
        from storage.seen import SqlSeenEvents
        from storage.store import SqlHistoryStore
        from web.server import WebServer

        settings = self.settings
        if settings.web.enable and not self.console:
            self.web = WebServer(settings.web, self.statuses, self)
            await self.web.start()
            self._closers.append(("web server", self.web.stop))
        self.store = await SqlHistoryStore.open(settings.database.url)
        self.store.on_write = self.metrics.database_write
        self._closers.append(("database", self.store.close))
        self.admin = AdminStore(self.store.engine)
        await self.admin.load()
        self._closers.insert(0, ("admin store", self.admin.close))
        self.model = OpenAICompatible(settings.openai, observer=self.metrics)
        self._closers.append(("model clients", self.model.close))
        self.presets = PresetBook(settings.presets)
        self.manager = ConversationManager(
            settings, self.store, self.model, self.presets, self.admin, reload=self.reload, metrics=self.metrics
        )
        self.metrics.queue_depth = lambda: self.manager.queues()["waiting"]
        self._closers.insert(0, ("conversations", self.manager.stop))
        self.manager.seen = await SqlSeenEvents.open(self.store.engine)
        self._closers.insert(1, ("seen events", self.manager.seen.close))
        self.manager.adapters = self.adapters
        await self._start_mcp(settings)
        if settings.web.enable and settings.web.console and not self.console:
            from adapters.webchat.adapter import WebChatAdapter

            await self._start_adapter("web", "web", None, WebChatAdapter)
        self.ready = True
        for instance, (name, section) in self._platforms(settings).items():
            await self._start_adapter(instance, name, section)

    async def _start_mcp(self, settings: Settings) -> None:
        """The MCP servers of `[[mcp.servers]]` (with `[tools] enable`), started in the background: a
        broken one is logged and retried, never fatal."""
        if not (settings.tools.enable and any(server.enable for server in settings.mcp.servers)):
            self.manager.toolbox.mcp = None
            return
        from tools.mcp import MCPTools

        self.mcp = MCPTools([server for server in settings.mcp.servers if server.enable])
        await self.mcp.start()
        self.manager.toolbox.mcp = self.mcp

    async def _stop_mcp(self) -> None:
        if self.mcp is not None:
            mcp, self.mcp = self.mcp, None
            self.manager.toolbox.mcp = None
            await mcp.stop()  # its child processes end with it

    def _platforms(self, settings: Settings) -> dict[str, tuple[str, Any]]:
        """instance name -> (adapter name, its config section), e.g. "mirai", "mirai#2"."""
        sections: list[tuple[str, Any]] = [("console", None)] if self.console else settings.platforms()
        counts: dict[str, int] = {}
        found: dict[str, tuple[str, Any]] = {}
        for name, section in sections:
            counts[name] = counts.get(name, 0) + 1
            found[name if counts[name] == 1 else f"{name}#{counts[name]}"] = (name, section)
        return found

    async def _start_adapter(
        self, instance: str, name: str, section: Any, factory: Callable[..., Adapter] | None = None
    ) -> None:
        adapter = (factory or adapter_factory(name))(instance, section, self.manager.handle)
        adapter.on_stopped = self._platform_stopped
        self.adapters[instance] = adapter
        await adapter.start()

    async def reload(self) -> str:
        """Read the config file again and use it everywhere; on any error keep the running config."""
        try:
            fresh = load_config(self.settings.path)
        except ConfigError as exc:
            return f"配置文件有误，仍在使用原来的配置。{exc.one_line()}"
        except OSError as exc:
            return f"配置文件无法读取，仍在使用原来的配置：{exc.strerror}"
        if not self.console and not fresh.platforms():
            return "新配置没有启用任何聊天平台，仍在使用原来的配置。"
        notes: list[str] = []
        if fresh.database.url != self.settings.database.url:
            notes.append("数据库地址的修改要重启后才生效。")
        for warning in fresh.warnings:
            logger.warning(warning)
        old_platforms, new_platforms = self._platforms(self.settings), self._platforms(fresh)
        previous, self.settings = self.settings, fresh
        setup_logging(
            fresh.log.level, fresh.log.file, fresh.log.rotation, fresh.log.retention, secrets=collect_secrets(fresh)
        )
        self.model.reload(fresh.openai)
        self.presets.reload(fresh.presets)
        self.manager.apply(fresh)
        if (fresh.tools.enable, fresh.mcp) != (previous.tools.enable, previous.mcp):
            await self._stop_mcp()
            await self._start_mcp(fresh)
        for instance, (name, section) in new_platforms.items():
            old = old_platforms.get(instance)
            if old is not None and old == (name, section):
                continue
            if instance in self.adapters:
                await self._stop_adapter(self.adapters.pop(instance))
            try:
                await self._start_adapter(instance, name, section)
            except BotError as exc:
                self.adapters.pop(instance, None)
                notes.append(f"{instance} 启动失败：{exc}")
        for instance in old_platforms.keys() - new_platforms.keys():
            if instance in self.adapters:
                await self._stop_adapter(self.adapters.pop(instance))
        logger.info("configuration reloaded from {}", fresh.path)
        return "配置已重新加载。" + "".join(notes)

    async def stop(self) -> None:
        """Close listeners and links first, then abandon in-flight work, then close the database."""
        await asyncio.gather(*(self._stop_adapter(a) for a in self.adapters.values()))
        await self._stop_mcp()
        for what, close in self._closers:
            try:
                await asyncio.wait_for(close(), STOP_SECONDS / 2)
            except Exception:
                logger.exception("closing the {} failed", what)

    async def _stop_adapter(self, adapter: Adapter) -> None:
        try:
            await asyncio.wait_for(adapter.stop(), STOP_SECONDS / 2)
        except Exception:
            logger.exception("stopping adapter {} failed", adapter.instance)


async def serve(settings: Settings, console: bool = False) -> int:
    """Run the bot until SIGINT/SIGTERM (or end of input in console mode)."""
    app = App(settings, console)
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    try:
        await app.start()
    except BotError as exc:
        from storage.errors import DatabaseNotWritable

        await app.stop()
        if isinstance(exc, ConfigError | DatabaseNotWritable):
            # A setting the user must change: one line naming it, like every config error.
            print(exc.one_line(), file=sys.stderr)
            return EXIT_CONFIG
        logger.error("start-up failed: {}", exc)
        return EXIT_START
    # The objects alive now (mostly the imported libraries) live as long as the process, yet every full
    # collection of the cyclic GC walked them all again: under a burst (bench/bench_burst.py, 1,000 users
    # at once) that was a quarter of the bot's CPU per message. Objects made later are collected as usual.
    gc.freeze()
    logger.info("bot is running; press Ctrl+C to stop")
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(app.all_stopped.wait())]
    console_adapter = app.adapters.get("console")
    if console_adapter is not None:
        waiters.append(asyncio.ensure_future(console_adapter.closed.wait()))  # type: ignore[attr-defined]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    if console_adapter is not None and not stop.is_set():
        # End of input: let the last typed message be answered before exiting.
        await asyncio.wait_for(app.manager.drain(), settings.response.max_timeout + 5)
    if app.all_stopped.is_set() and not stop.is_set():
        logger.error(
            "every platform has stopped for good ({}); exiting so that it can be restarted", app.stopped_reason
        )
        await app.stop()
        return EXIT_START
    logger.info("stopping")
    await app.stop()
    logger.info("stopped")
    return 0


async def check(settings: Settings, wait: float = 5.0) -> int:
    """`--check`: the config, the database, each model account and each platform link, once; a table."""
    from llm.openai_compat import OpenAICompatible
    from storage.store import SqlHistoryStore

    # ok None: a note, not a failure (v2 sections this bot does not have)
    rows: list[tuple[str, bool | None, str]] = [("config", True, str(settings.path))]
    rows += [("unsupported v2 setting", None, line) for line in settings.unsupported]
    try:
        store = await SqlHistoryStore.open(settings.database.url)
        await store.close()
        rows.append(("database", True, settings.database.url.split("://")[0]))
    except BotError as exc:
        rows.append(("database", False, str(exc)))
    model = OpenAICompatible(settings.openai)
    for name, ok, detail in await model.check():
        rows.append((f"model account {name}", ok, detail))
    await model.close()
    for name, section in settings.platforms():
        adapter = adapter_factory(name)(name, section, _ignore_event)
        try:
            await adapter.start()
            await adapter.wait_connected(wait)
            port = getattr(adapter, "port", None)
            for link in adapter.status().links:
                detail = link.state.value
                if link.state.value == "listening" and port:
                    detail += f" on port {port}, waiting for the QQ side"
                elif link.reason and not link.healthy:
                    detail += f" ({link.reason})"
                rows.append((f"platform {name}: {link.name}", link.healthy, detail))
            if not adapter.links:
                rows.append(
                    (f"platform {name}", adapter.connected, "connected" if adapter.connected else "not connected")
                )
        except BotError as exc:
            rows.append((f"platform {name}", False, str(exc)))
        finally:
            await adapter.stop()
    width = max(len(what) for what, _, _ in rows)
    for what, result, detail in rows:
        print(f"{'SKIP' if result is None else 'OK  ' if result else 'FAIL'}  {what:<{width}}  {detail}")
    return 0 if all(result is not False for _, result, _ in rows) else 1


async def _ignore_event(event: object) -> None:
    """`--check` only looks at links; events that arrive meanwhile are dropped."""


async def _run(main: Awaitable[int]) -> int:
    quiet_repeated_loop_errors(asyncio.get_running_loop())
    return await main


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            # Windows: no loop signal handlers; a plain handler hands over to the loop.
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ChatGPT QQ 机器人 / ChatGPT bot for QQ")
    parser.add_argument(
        "--config", default=None, help="配置文件路径 (default: config.toml, or v2's config.cfg when it is absent)"
    )
    parser.add_argument("--console", action="store_true", help="在终端里对话，用于检查模型设置 (chat in the terminal)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="检查配置、数据库、模型账号和平台连接后退出 (test every part once, then exit)",
    )
    transfer = parser.add_mutually_exclusive_group()
    transfer.add_argument(
        "--backup",
        metavar="PATH",
        type=Path,
        help="备份数据库后退出：SQLite 在线备份，其他数据库为 JSONL 转储 (back up the database, then exit)",
    )
    transfer.add_argument(
        "--export-history",
        metavar="PATH",
        type=Path,
        help="把全部会话和消息导出为 JSONL 后退出 (export every session and message as JSONL, then exit)",
    )
    transfer.add_argument(
        "--import-history",
        metavar="PATH",
        type=Path,
        help="导入 JSONL 导出或转储，跳过已有的会话 (import an export or a dump; sessions present are skipped)",
    )
    return parser.parse_args(argv)


def _transfer(args: argparse.Namespace) -> tuple[str, Path] | None:
    """The --backup / --export-history / --import-history action and its path, if one was given."""
    for action, path in (("backup", args.backup), ("export", args.export_history), ("import", args.import_history)):
        if path is not None:
            return action, path
    return None


def _run_transfer(settings: Settings, action: str, path: Path) -> int:
    """Open the store, do the work, close it, print one line; no adapter or web server starts."""
    from storage.backup import run_command

    code, line = asyncio.run(run_command(action, settings.database.url, path))
    print(line, file=sys.stdout if code == 0 else sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the bot; returns the process exit code."""
    args = parse_args(argv)
    path = Path(args.config or "config.toml")
    if args.config is None and not path.is_file() and Path("config.cfg").is_file():
        # chatgpt-mirai-qq-bot v2 read config.cfg (also TOML); its users keep their file and their mounts.
        path = Path("config.cfg")
        print("未找到 config.toml，使用 v2 的 config.cfg (config.toml not found; using config.cfg)", file=sys.stderr)
    if not path.is_file():
        print(
            f"找不到配置文件 {path}：请先把 config.example.toml 复制为 config.toml 并填写。"
            f" (config file {path} not found: copy config.example.toml to config.toml and edit it)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        settings = load_config(path)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(
        settings.log.level,
        settings.log.file,
        settings.log.rotation,
        settings.log.retention,
        secrets=collect_secrets(settings),
    )
    # Before the "no platform" error: a v2 file with only unsupported sections learns why.
    for warning in settings.warnings:
        logger.warning(warning)
    transfer = _transfer(args)
    if transfer is not None:
        return _run_transfer(settings, *transfer)
    if not args.console and not args.check and not settings.platforms():
        sections = "、".join(f"[{name}]" for name in platform_names())
        error = ConfigError(
            platform_names()[0] if platform_names() else "(config)",
            f"没有启用任何聊天平台，请填写 {sections} 之一 (no platform enabled: add one of {sections})",
        )
        print(error.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.check:
            return asyncio.run(check(settings))
        return asyncio.run(_run(serve(settings, console=args.console)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
