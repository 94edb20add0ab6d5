"""The command table and the session commands: reset, rollback, stop, switching model, AI or reply mode, ping, help."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from conversation.job import Handler, Job, failure_text
from conversation.presets import PresetBook
from conversation.sessions import SessionSettings
from conversation.tools import ToolBox
from conversation.voice import OFF_WORDS, speech_for
from core.config import Settings, load_config
from core.errors import ConfigError, LLMError
from core.message import Image, Message
from llm.base import ChatModel
from storage.admin import DRAW
from storage.base import VOICE_OFF, HistoryStore
from voice.service import VoiceService


@dataclass(frozen=True, slots=True)
class Command:
    """A matched command: its handler, its argument, whether only managers may run it, and the
    prefix of the rate-limit scopes it counts against (storage.admin.DRAW for drawing; "" for none)."""

    handler: Handler
    argument: str = ""
    admin_only: bool = False
    quota: str = ""


class CommandTable:
    """Exact command words and `re.fullmatch` patterns, looked up once per triggered message."""

    def __init__(self) -> None:
        self._words: dict[str, tuple[Handler, bool]] = {}
        self._patterns: list[tuple[re.Pattern[str], Handler, bool, str]] = []

    def add_words(self, words: list[str], handler: Handler, admin_only: bool = False) -> None:
        for word in words:
            if word.strip():
                self._words[word.strip()] = (handler, admin_only)

    def add_pattern(self, pattern: str, handler: Handler, admin_only: bool = False, quota: str = "") -> None:
        """`pattern`'s groups are the command's argument (joined by a space when there are several)."""
        self._patterns.append((re.compile(pattern, re.DOTALL), handler, admin_only, quota))

    def match(self, text: str) -> Command | None:
        """The command `text` asks for, or None when it is not one."""
        found_word = self._words.get(text)
        if found_word is not None:
            return Command(found_word[0], "", found_word[1])
        for pattern, handler, admin_only, quota in self._patterns:
            found = pattern.fullmatch(text)
            if found:
                argument = " ".join(g.strip() for g in found.groups() if g) if found.groups() else ""
                return Command(handler, argument, admin_only, quota)
        return None


MODE_NAMES = {"text": "文字", "image": "图片", "mixed": "图文混合"}  # `{mode}` in ping_response

# session key -> stops the session's running answer and drops its queued messages; True when one ran
StopSession = Callable[[str], Awaitable[bool]]


async def _nothing_to_stop(_: str) -> bool:
    return False


class SessionCommands:
    """The built-in commands; each answers with a short text and never reaches the model.

    They run as soon as they arrive, beside a running answer of the same session (never queued
    behind it); `stop_session` is how stop, reset and loading a preset end that answer first.
    """

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        sessions: SessionSettings,
        model: ChatModel,
        presets: PresetBook,
        stop_session: StopSession = _nothing_to_stop,
        voice: VoiceService | None = None,
        tools: ToolBox | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.model = model
        self.presets = presets
        self.stop_session = stop_session
        self.voice = voice
        self.tools = tools
        # Whether `画` can work: only accounts with `image_model` draw (refreshed by the reload command).
        self.can_draw = any(account.image_model for account in settings.openai.accounts)

    def register(self, table: CommandTable) -> None:
        trigger = self.settings.trigger
        table.add_words([*trigger.reset_command, "/reset"], self.reset)
        table.add_words([*trigger.rollback_command, "/rollback"], self.rollback)
        table.add_words(trigger.ping_command, self.ping)
        table.add_words([*trigger.reload_command, "/reload"], self.reload)
        table.add_words([*trigger.help_command, "/help"], self.help)
        table.add_words(trigger.stop_command, self.stop)
        for mode, words in self.mode_words().items():
            table.add_words(words, functools.partial(self.switch_reply_mode, mode=mode))
        table.add_pattern(r"/model (.+)", self.switch_model)
        presets = self.settings.presets
        table.add_pattern(presets.command, self.load_preset)
        table.add_pattern(r"/preset (\S+)", self.load_preset)
        table.add_words(["预设列表", "/presets"], self.preset_list)
        table.add_words(["工具列表", "/tools"], self.tool_list)
        table.add_pattern(trigger.switch_model, self.switch_model)
        table.add_pattern(trigger.switch_command, self.switch_account)
        table.add_pattern(trigger.switch_voice, self.switch_voice)
        words = [re.escape(word.strip()) for word in trigger.prefix_image if word.strip()]
        if words:
            table.add_pattern(rf"(?:{'|'.join(words)})\s*(\S.*)", self.draw, quota=DRAW)

    async def draw(self, job: Job, prompt: str) -> str | Message:
        """A picture from the images API of an account that has `image_model`."""
        try:
            image = await self.model.draw(prompt)
        except LLMError as exc:
            kind = getattr(exc, "kind", "server")
            if kind == "unsupported":
                return self.settings.response.drawing_unavailable
            return failure_text(self.settings.response.error_format, kind)
        return (Image(url=image.url) if image.url else Image(base64=image.base64),)

    async def reset(self, job: Job, _: str) -> str:
        """A new conversation; a running answer is stopped first, so it cannot be stored afterwards."""
        await self.stop_session(job.session_key)
        await self.store.reset(job.session_key)
        return self.settings.response.reset

    async def stop(self, job: Job, _: str) -> str:
        """Cancel the running answer (nothing more of it is sent or stored) and the messages queued after it."""
        if await self.stop_session(job.session_key):
            return self.settings.response.stopped
        return self.settings.response.nothing_to_stop

    def mode_words(self) -> dict[str, list[str]]:
        """Reply mode -> the command words switching a session to it (v2's `*_only_command`)."""
        trigger = self.settings.trigger
        return {
            "mixed": trigger.mixed_only_command,
            "image": trigger.image_only_command,
            "text": trigger.text_only_command,
        }

    async def switch_reply_mode(self, job: Job, _: str, *, mode: str) -> str:
        """Answer this session as text, as pictures, or as pictures when long (kept across restarts)."""
        await self.sessions.update(job.session_key, reply_mode=mode)
        response = self.settings.response
        return {"mixed": response.switched_to_mixed, "image": response.switched_to_image}.get(
            mode, response.switched_to_text
        )

    async def rollback(self, job: Job, _: str) -> str:
        response = self.settings.response
        if await self.store.rollback(job.session_key):
            return response.rollback_success
        reset_word = self.settings.trigger.reset_command[0] if self.settings.trigger.reset_command else "/reset"
        return response.rollback_fail.replace("{reset}", reset_word)

    async def reload(self, job: Job, _: str) -> str:
        """Admins only: read the config file again and use its `[openai]` accounts."""
        response = self.settings.response
        if not job.admin:
            return response.admin_only
        try:
            fresh = load_config(self.settings.path)
        except ConfigError as exc:
            return exc.one_line()
        except OSError as exc:
            return f"配置文件无法读取 (cannot read the config file): {exc.strerror}"
        self.model.reload(fresh.openai)
        self.can_draw = any(account.image_model for account in fresh.openai.accounts)
        logger.bind(adapter="chat").info("model accounts reloaded from {}", self.settings.path)
        return _fill(response.reloaded, count=str(len(fresh.openai.accounts)))

    async def load_preset(self, job: Job, name: str) -> str:
        """Start a new conversation with preset `name`; it stays through resets and restarts."""
        settings = self.settings.presets
        preset = self.presets.get(name)
        if preset is None:
            return _fill(settings.not_found, name=name, presets="、".join(self.presets.names()))
        await self.stop_session(job.session_key)
        await self.store.reset(job.session_key)
        await self.sessions.update(job.session_key, preset=preset.name)
        return settings.loaded_successful

    async def tool_list(self, job: Job, _: str) -> str:
        """The tools the model may use when answering this sender, here."""
        if self.tools is None or not self.tools.enabled:
            return "没有启用工具（[tools] enable）。"
        allowed = self.tools.allowed(job.event, job.admin)
        if not allowed:
            return "这里没有你可以使用的工具。"
        lines = [f"{tool.spec.name}：{_first_line(tool.spec.description)}" for tool in allowed]
        return "回答时可以使用这些工具：\n" + "\n".join(lines)

    async def preset_list(self, job: Job, _: str) -> str:
        settings = self.settings.presets
        if settings.hide and not job.admin:
            return self.settings.response.admin_only
        return _fill(settings.list_format, presets="\n".join(self.presets.names()))

    async def help(self, job: Job, _: str) -> str:
        """The commands this sender may use with this config, one per line (none that could only fail)."""
        trigger = self.settings.trigger
        lines = [
            f"{_first(trigger.reset_command, '/reset')}：清空当前对话",
            f"{_first(trigger.rollback_command, '/rollback')}：撤回上一轮问答",
        ]
        if trigger.stop_command:
            lines.append(f"{trigger.stop_command[0]}：停止正在进行的回答")
        if self.presets.names():
            lines.append("加载预设 <名称>（/preset）：换一个预设并开始新对话")
            if job.admin or not self.settings.presets.hide:
                lines.append("预设列表：查看可用的预设")
        models = self.allowed_models()
        # Switching needs somewhere to go: a listed model, or a second one; admins may name any model.
        if job.admin or trigger.allowed_models or len(models) > 1:
            lines.append("切换模型 <模型>（/model）：" + "、".join(models))
        if job.admin or trigger.allow_switching_ai:
            lines.append("切换AI <名称>：" + "、".join(name for name, _, _ in self.model.accounts()))
        modes = [words[0] for words in self.mode_words().values() if words]
        if modes:
            lines.append("、".join(modes) + "：切换回复的形式（图文混合、图片或文字）")
        if self.speaks:
            lines.append("切换语音 <语音>：用这个语音回答；切换语音 关闭：不再用语音回答")
        if self.tools is not None and self.tools.enabled:
            lines.append("工具列表（/tools）：查看回答时可以使用的工具")
        if trigger.ping_command:
            lines.append(f"{trigger.ping_command[0]}：查看当前账号、模型、预设和语音")
        if trigger.prefix_image and self.can_draw:
            lines.append(f"{trigger.prefix_image[0]} <描述>：画一张图")
        if job.admin:
            lines += [
                "—— 管理员 ——",
                ".设置 群组|好友|成员 <号码|默认> 额度为 N 条/小时",
                ".查看 群组|好友|成员 <号码|默认> 的使用情况",
                ".设置 群组|好友|成员 <号码|默认> 画图额度为 N 个/小时（.查看 … 的画图使用情况）",
                ".设置 群组|好友|成员 <号码|默认> 工具额度为 N 次/小时、.设置 群组 <群号> 工具 开启|关闭",
                ".拉黑 <QQ号|群号>、.拉黑 <QQ号> <群号>、.解除拉黑 …",
                ".重新加载配置文件、.预设列表、.状态",
            ]
        return self.settings.response.help_header + "\n" + "\n".join(lines)

    async def ping(self, job: Job, _: str) -> str:
        state = await self.sessions.get(job.session_key)
        accounts = [name for name, _, _ in self.model.accounts()]
        account = state.account or f"自动（轮流使用 {', '.join(accounts)}）"
        model = state.model or self.model.default_model(state.account) or "各账号的默认模型"
        preset = state.preset or "default"
        mode = MODE_NAMES.get(state.reply_mode or self.settings.response.mode, "文字")
        response = self.settings.response
        text = _fill(response.ping_response, account=account, model=model, preset=preset, mode=mode)
        if self.voice is None or not self.speaks:
            return _fill(text, voice="无", supported_tts="无")
        speech = speech_for(self.settings, state, self.voice.default_voice)
        voice = "无" if speech is None else self.voice.shown(speech.voice)  # v2 said 无
        voices = "、".join(self.voice.shown(name) for name in self.voice.offered())
        if "{supported_tts}" not in text:
            text += response.ping_tts_response
        return _fill(text, voice=voice, supported_tts=voices)

    @property
    def speaks(self) -> bool:
        """Whether answers can be spoken (`[voice] tts_engine`)."""
        return self.voice is not None and self.voice.tts_enabled

    async def switch_voice(self, job: Job, name: str) -> str:
        """v2's 切换语音: this session's answers in voice `name` (kept across restarts), or no voice (关闭)."""
        response = self.settings.response
        if name.strip().lower() in OFF_WORDS:
            await self.sessions.update(job.session_key, voice=VOICE_OFF)
            return response.voice_off
        if self.voice is None or not self.speaks:
            return response.voice_unavailable
        voice = self.voice.resolve(name.strip())
        if voice is None:
            voices = "、".join(self.voice.shown(found) for found in self.voice.offered())
            return _fill(response.voice_not_found, voice=name, voices=voices)
        await self.sessions.update(job.session_key, voice=voice)
        return _fill(response.voice_switched, voice=self.voice.shown(voice))

    def allowed_models(self) -> list[str]:
        """What non-admins may switch to: `allowed_models`, else every model an account names."""
        if self.settings.trigger.allowed_models:
            return list(self.settings.trigger.allowed_models)
        found: dict[str, None] = {}
        for _, default, others in self.model.accounts():
            found.update(dict.fromkeys((default, *others)))
        return list(found)

    async def switch_model(self, job: Job, model: str) -> str:
        response = self.settings.response
        allowed = self.allowed_models()
        if not model or (not job.admin and model not in allowed):
            return _fill(response.model_not_allowed, model=model, models="、".join(allowed))
        # Keep the session's chosen account when it names the model; otherwise one that does (or any).
        state = await self.sessions.get(job.session_key)
        served = {name: (default, *others) for name, default, others in self.model.accounts()}
        account = state.account if model in served.get(state.account, ()) else self.model.account_for_model(model)
        await self.sessions.update(job.session_key, model=model, account=account)
        return _fill(response.model_switched, model=model)

    async def switch_account(self, job: Job, name: str) -> str:
        response = self.settings.response
        if not job.admin and not self.settings.trigger.allow_switching_ai:
            return response.switching_not_allowed
        accounts = {account: default for account, default, _ in self.model.accounts()}
        if name not in accounts:
            return _fill(response.account_not_found, account=name, accounts="、".join(accounts))
        await self.sessions.update(job.session_key, account=name, model="")
        return _fill(response.account_switched, account=name, model=accounts[name])


def _first_line(text: str, limit: int = 80) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _first(words: list[str], fallback: str) -> str:
    return words[0] if words else fallback


def _fill(template: str, **values: str) -> str:
    """Replace {name} placeholders without str.format, so other braces in user texts are harmless."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template
