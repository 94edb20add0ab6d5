"""Load config.toml (tomllib, tomlkit for errors) into validated, typed settings; errors name key and line."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import tomlkit
import tomlkit.exceptions
from loguru import logger
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from core.errors import ConfigError, escape_control

Port = Annotated[int, Field(ge=1, le=65535)]
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts that keep a listener on this machine
DEFAULT_ENDPOINT = "https://api.openai.com/v1"


class Section(BaseModel):
    """A config table: unknown keys are kept so they can be warned about, never fatal."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _id_list(value: Any) -> Any:
    """Accept one id or a list of ids (numbers or strings); give a tuple of strings."""
    if value in (None, "", 0):
        return ()
    if isinstance(value, int | str):
        return (str(value),)
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return value


# Manager ids and the like: one id or a list, numbers or strings.
IdList = Annotated[tuple[str, ...], BeforeValidator(_id_list)]

# Platform sections ([mirai], [onebot], ...) and their settings models, in the order adapters start.
# Filled by adapters/registry.py, so adding a protocol never touches this file.
_PLATFORMS: dict[str, type[Section]] = {}


def register_platform(name: str, model: type[Section]) -> None:
    """Make `[name]` (or `[[name]]`) a platform section validated by `model`."""
    _PLATFORMS[name] = model


def platform_names() -> tuple[str, ...]:
    """The registered platform sections."""
    return tuple(_PLATFORMS)


class OpenAIAccount(Section):
    """One `[[openai.accounts]]` entry."""

    api_key: SecretStr
    api_endpoint: str = ""
    model: str = "gpt-4o-mini"
    proxy: str = ""
    name: str = ""
    models: list[str] = Field(default_factory=list)
    vision: bool = False
    image_model: str = ""
    # requests in flight at once on this account; hosted APIs take many, local servers want 1-4
    max_concurrency: int = Field(64, ge=1, le=10000)
    # completion cap for this account's answers (tokens); 0: gpt_params.max_reply_tokens
    max_reply_tokens: int = Field(0, ge=0)
    tools: bool = True  # the model can call tools ([tools]); false for models without function calling

    @field_validator("api_key")
    @classmethod
    def _printable_ascii(cls, value: SecretStr) -> SecretStr:
        # An HTTP header cannot carry other characters; a full-width or Chinese character here is
        # always a copy-paste mistake or the example's placeholder.
        if not all(32 < ord(ch) < 127 for ch in value.get_secret_value()):
            raise ValueError(
                "API Key 只能包含英文字母、数字和符号，请填写真实的 key (only ASCII letters, digits, symbols)"
            )
        return value

    @field_validator("api_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("接口地址应以 http:// 或 https:// 开头 (must start with http:// or https://)")
        return value.rstrip("/")


class GptParams(Section):
    """`[openai.gpt_params]`: sampling settings shared by every account."""

    temperature: float = 0.5
    max_tokens: int = Field(4000, ge=1)
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = Field(1000, ge=0)
    # completion cap for every answer (tokens); 0: only what the context budget leaves
    max_reply_tokens: int = Field(0, ge=0)
    stream: bool = True
    timeout: float = Field(120.0, gt=0)


class OpenAISettings(Section):
    """`[openai]`: accounts used in turn, failing over from one to the next."""

    api_endpoint: str = ""  # v2 kept the endpoint here; it is the default for every account
    accounts: list[OpenAIAccount] = Field(default_factory=list)
    gpt_params: GptParams = Field(default_factory=GptParams)
    max_retries: int = Field(2, ge=0, le=10)
    image_size: str = "1024x1024"


class DatabaseSettings(Section):
    """`[database]`."""

    url: str = "sqlite+aiosqlite:///data/bot.sqlite3"
    # Several bot processes use this database: each message id is claimed in the database, so an
    # event delivered to two of them is answered once. None: yes for PostgreSQL / MySQL, no for SQLite.
    shared: bool | None = None

    @property
    def is_shared(self) -> bool:
        return self.shared if self.shared is not None else not self.url.startswith("sqlite")


class TriggerSettings(Section):
    """`[trigger]`: when the bot answers, and the command words."""

    prefix: list[str] = Field(default_factory=lambda: [""])
    prefix_friend: list[str] = Field(default_factory=list)
    prefix_group: list[str] = Field(default_factory=list)
    require_mention: Literal["at", "mention", "none"] = "at"
    reset_command: list[str] = Field(default_factory=lambda: ["重置会话"])
    rollback_command: list[str] = Field(default_factory=lambda: ["回滚会话"])
    ignore_regex: list[str] = Field(default_factory=list)
    prefix_image: list[str] = Field(default_factory=lambda: ["画"])
    switch_model: str = r"切换模型 (.+)"
    switch_command: str = r"切换AI (.+)"
    switch_voice: str = r"切换语音 (.+)"  # v2's: a voice name, or 关闭 / None to stop speaking
    ping_command: list[str] = Field(default_factory=lambda: ["ping"])
    reload_command: list[str] = Field(default_factory=lambda: ["重载配置"])
    help_command: list[str] = Field(default_factory=lambda: ["帮助"])
    stop_command: list[str] = Field(default_factory=lambda: ["停止", "/stop"])
    # v2's per-session reply modes (see `[response] mode`)
    mixed_only_command: list[str] = Field(default_factory=lambda: ["图文混合模式"])
    image_only_command: list[str] = Field(default_factory=lambda: ["图片模式"])
    text_only_command: list[str] = Field(default_factory=lambda: ["文本模式"])
    allowed_models: list[str] = Field(default_factory=list)
    allow_switching_ai: bool = True

    @field_validator("ignore_regex")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compiles(pattern)
        return value

    @field_validator("switch_model", "switch_command", "switch_voice")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        _compiles(value)
        return value


def _compiles(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"正则表达式无效 (invalid regular expression): {exc}") from None
    except (RecursionError, OverflowError, RuntimeError, MemoryError):
        # deep nesting or huge repeat counts fail inside the regex compiler, not as re.error
        raise ValueError("正则表达式过于复杂 (regular expression too complex)") from None


class ResponseSettings(Section):
    """`[response]`: how replies look and the texts users see."""

    quote: bool = True
    timeout: float = Field(30.0, gt=0)
    timeout_format: str = "我还在思考中，请再等一下~"
    max_timeout: float = Field(600.0, gt=0)
    cancel_wait_too_long: str = "啊哦，这个问题有点难，让我想了好久也没想明白。试试换个问法？"
    max_queue_size: int = Field(10, ge=0)
    queue_full: str = "抱歉！我现在要回复的人有点多，暂时没有办法接收新的消息了，请过会儿再给我发吧！"
    reset: str = "会话已重置。"
    rollback_success: str = "已回滚至上一条对话，你刚刚发的我就忘记啦！"
    rollback_fail: str = "回滚失败，没有更早的记录了！如果你想要重新开始，请发送：{reset}"
    error_format: str = (
        "出现故障！如果这个问题持续出现，请和我说“重置会话” 来开启一段新的会话，"
        "或者发送 “回滚会话” 来回溯到上一条对话，你上一条说的我就当作没看见。\n原因：{exc}"
    )
    buffer_delay: float = Field(15.0, ge=0)
    show_reasoning: bool = False
    ping_response: str = "当前账号：{account}\n当前模型：{model}\n当前预设：{preset}\n当前语音：{voice}"
    ping_tts_response: str = "\n可用语音：{supported_tts}"  # v2's: added when answers can be spoken
    model_switched: str = "已切换到模型 {model}。"
    model_not_allowed: str = "不能切换到模型 {model}。可以使用的模型：{models}"
    account_switched: str = "已切换到 {account}（模型 {model}）。"
    account_not_found: str = "没有名为 {account} 的 AI。可以使用的：{accounts}"
    switching_not_allowed: str = "只有管理员可以切换 AI。"
    drawing_unavailable: str = "没有可以画图的账号，请管理员在账号里设置 image_model。"
    interrupted: str = "（回答中断了：{exc}）"
    not_saved: str = "（提示：数据库暂时无法写入，这次对话没有被保存。）"
    admin_only: str = "只有管理员可以使用这个命令。"
    poke_reply: str = ""
    queued_notice_size: int = Field(3, ge=0)
    queued_notice: str = "消息已收到！当前我还有{queue_size}条消息要回复，请您稍等。"
    mode: Literal["text", "image", "mixed"] = "text"
    switched_to_mixed: str = "已切换至图文混合模式，接下来我的回复将会以图文混合的方式呈现！"
    switched_to_image: str = "已切换至纯图片模式，接下来我的回复将会以图片呈现！"
    switched_to_text: str = "已切换至纯文字模式，接下来我的回复将会以文字呈现（被吞除外）！"
    image_threshold: int = Field(800, ge=0)
    forward_threshold: int = Field(2000, ge=0)
    font_path: str = ""
    help_header: str = "你可以使用这些命令："
    stopped: str = "好的，已停止回答。"
    nothing_to_stop: str = "现在没有正在进行的回答。"
    max_reply_chars: int = Field(6000, ge=0)  # an answer is cut here (0: no cap)
    truncated: str = "（回答过长，已截断）"

    @field_validator("mode", mode="before")
    @classmethod
    def _v2_mode(cls, value: Any) -> Any:
        # chatgpt-mirai-qq-bot v2 spelled these force-text / force-image
        if isinstance(value, str):
            return {"force-text": "text", "force-image": "image"}.get(value, value)
        return value

    reloaded: str = "已重新加载模型账号设置（{count} 个账号）。其他设置重启后生效。"
    # Answers by voice ([voice] tts_engine): "off" only sessions that chose a voice (切换语音) hear
    # one, with the text; "voice" every session speaks, text only past tts_max_chars; "both" text and voice.
    voice_mode: Literal["off", "voice", "both"] = "off"
    voice_switched: str = "已切换至 {voice} 语音，让我们继续聊天吧！"
    voice_off: str = "已关闭语音，让我们继续聊天吧！"
    voice_not_found: str = "提供的语音ID无效，请输入一个有效的语音ID。如：{voices}。"
    voice_unavailable: str = "没有配置语音合成（[voice] tts_engine），无法切换语音。"
    voice_not_understood: str = "抱歉，我没听清这条语音，请再说一遍或者打字告诉我。"


class PresetSettings(Section):
    """`[presets]`: preset files, their aliases (v2's `keywords`) and the texts of the preset commands."""

    scan_dir: str = "./presets"
    command: str = r"加载预设 (\w+)"
    keywords: dict[str, str] = Field(default_factory=dict)  # alias → preset file path, or alias → preset name
    loaded_successful: str = "预设加载成功！"
    hide: bool = False
    default: str = "default"
    list_format: str = "当前可用的预设：\n{presets}"
    not_found: str = "没有找到预设 {name}。可用的预设：{presets}"

    @field_validator("command")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        _compiles(value)
        return value


class ConversationSettings(Section):
    """`[conversation]`: how history is scoped and how much of it the model sees."""

    group_scope: Literal["member", "group"] = "member"
    max_history_tokens: int = Field(0, ge=0)
    # 0: no global cap; each account's `max_concurrency` is the real limit (a lower cap here hid it)
    max_concurrency: int = Field(0, ge=0)
    group_concurrency: int = Field(4, ge=1)


class SystemSettings(Section):
    """`[system]`."""

    reply_temp: bool = False
    accept_friend_request: bool = False
    accept_group_invite: bool = False
    auto_reset_timeout_seconds: int = Field(28800, ge=0)  # 0: never

    @field_validator("auto_reset_timeout_seconds", mode="before")
    @classmethod
    def _v2_never(cls, value: Any) -> Any:
        # chatgpt-mirai-qq-bot v2 wrote -1 for "never reset"; here that is 0
        return 0 if value == -1 and not isinstance(value, bool) else value


class RatelimitSettings(Section):
    """`[ratelimit]`: the texts around hourly limits (the limits themselves are set by admin commands)."""

    warning_rate: float = Field(0.8, ge=0, le=1)
    warning_msg: str = (
        "\n\n警告：额度即将耗尽！\n目前已发送：{usage}条消息，最大限制为{limit}条消息/小时，请调整您的节奏。"
        "\n额度限制整点重置，当前服务器时间：{current_time}"
    )
    exceed: str = "已达到额度限制，请等待下一小时继续和我对话。"
    draw_warning_msg: str = (
        "\n\n警告：额度即将耗尽！\n目前已画：{usage}个图，最大限制为{limit}个图/小时，请调整您的节奏。"
        "\n额度限制整点重置，当前服务器时间：{current_time}"
    )
    draw_exceed: str = "已达到额度限制，请等待下一小时再使用画图功能。"
    tool_exceed: str = "（本小时的工具调用额度已用完，这次没有使用工具。）"


class ModerationSettings(Section):
    """`[moderation]`: a local blocked-word list for what users send and what the model answers."""

    words: list[str] = Field(default_factory=list)
    words_file: str = ""
    input_message: str = "你的消息包含不允许的内容，换个说法吧。"
    output_mode: Literal["mask", "refuse"] = "mask"
    output_message: str = "这个回答包含不允许的内容，已被拦截。"
    # the lines of words_file, read when the config is loaded (so --check and start-up report a bad file)
    _file_words: tuple[str, ...] | None = PrivateAttr(default=None)

    def load_words_file(self) -> None:
        """Read `words_file` now; raises ValueError with the user-facing problem."""
        self._file_words = read_words_file(Path(self.words_file)) if self.words_file else ()

    def blocked_words(self) -> list[str]:
        """`words` and the lines of `words_file`; raises ConfigError when the file cannot be used."""
        if self._file_words is None:  # settings built without load_config (tests, tools)
            try:
                self.load_words_file()
            except ValueError as exc:
                raise ConfigError("moderation.words_file", str(exc)) from None
        return [*self.words, *(self._file_words or ())]


class VoiceSettings(Section):
    """`[voice]`: voice messages transcribed (stt_*), answers spoken (tts_*); both off unless set."""

    # speech to text: an OpenAI-compatible /audio/transcriptions endpoint; off while stt_model is ""
    stt_model: str = ""  # whisper-1, FunAudioLLM/SenseVoiceSmall (SiliconFlow), a local faster-whisper model
    stt_account: str = ""  # the [[openai.accounts]] name whose key, endpoint and proxy are used ("" the first)
    stt_api_endpoint: str = ""  # its own endpoint instead of the account's
    stt_api_key: SecretStr = SecretStr("")  # its own key instead of the account's
    stt_language: str = ""  # e.g. "zh"; "" lets the model tell
    stt_timeout: float = Field(30.0, gt=0)
    # text to speech: "" off, "openai" (/audio/speech), "edge" (Edge TTS, free), "espeak" (espeak-ng, offline)
    tts_engine: Literal["", "openai", "edge", "espeak"] = ""
    tts_voice: str = ""  # the default voice ("" the engine's own default)
    tts_voices: list[str] = Field(default_factory=list)  # voices 切换语音 offers ([] the engine's list)
    tts_model: str = "tts-1"  # for "openai": tts-1, gpt-4o-mini-tts, FunAudioLLM/CosyVoice2-0.5B, ...
    tts_account: str = ""
    tts_api_endpoint: str = ""
    tts_api_key: SecretStr = SecretStr("")
    tts_speed: float = Field(1.0, ge=0.25, le=4.0)
    tts_max_chars: int = Field(300, ge=1, le=5000)  # spoken at most; the rest of a long answer is text
    tts_timeout: float = Field(30.0, gt=0)

    @property
    def stt_enabled(self) -> bool:
        return bool(self.stt_model)

    @property
    def tts_enabled(self) -> bool:
        return bool(self.tts_engine)


def _group_ids(value: Any) -> Any:
    """Group ids written as numbers or strings, as strings."""
    return [str(item) for item in value] if isinstance(value, list) else value


# who may use a tool: everyone, the managers, or everyone in the listed groups
ToolAccess = Literal["everyone", "admins"] | Annotated[list[str], BeforeValidator(_group_ids)]


class ToolSettings(Section):
    """`[tools]`: tools the model may call while answering (off unless enabled)."""

    enable: bool = False
    max_steps: int = Field(5, ge=1, le=50)  # tool calls in one answer, at most
    timeout: float = Field(20.0, gt=0)  # seconds one tool call may take
    # built-in tools, each can be switched off
    time: bool = True  # current date and time in `timezone`
    timezone: str = "Asia/Shanghai"
    fetch: bool = True  # a web page as text (http/https, public addresses only)
    fetch_max_bytes: int = Field(2_000_000, ge=1024)
    fetch_max_chars: int = Field(8000, ge=100)  # text handed to the model
    search: Literal["", "searxng", "tavily", "bing", "bocha"] = ""  # web search provider ("" off)
    search_url: str = ""  # the SearXNG instance (or another endpoint for the provider)
    search_api_key: SecretStr = SecretStr("")
    search_results: int = Field(5, ge=1, le=20)
    # who may use each tool (by its name, MCP tools as "<server>__<tool>"): "everyone", "admins" or a list
    # of group ids; tools not named follow `default_access`
    allowed: dict[str, ToolAccess] = Field(default_factory=dict)
    default_access: ToolAccess = "everyone"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"未知时区 (unknown time zone) {value!r}，如 Asia/Shanghai") from None
        return value


class MCPServer(Section):
    """One `[[mcp.servers]]` entry: a local command (stdio) or a URL (SSE / streamable HTTP)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")  # its tools are named "<name>__<tool>"
    enable: bool = True
    command: str = ""  # e.g. "uvx" or "python"; used when `url` is ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    url: str = ""
    transport: Literal["auto", "sse", "streamable_http"] = "auto"  # auto: SSE when the URL ends in /sse
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(30.0, gt=0)  # seconds to start and list tools

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("应以 http:// 或 https:// 开头 (must start with http:// or https://)")
        return value

    def model_post_init(self, context: Any) -> None:
        if not self.command and not self.url:
            raise ValueError("需要 command（本地命令）或 url（SSE / HTTP 地址）(needs a command or a url)")


class MCPSettings(Section):
    """`[mcp]`: MCP servers whose tools the model may call (with `[tools] enable`)."""

    servers: list[MCPServer] = Field(default_factory=list)


class LogSettings(Section):
    """`[log]`."""

    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    file: str = ""
    rotation: str = "10 MB"
    retention: int = Field(7, ge=1)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class WebSettings(Section):
    """`[web]`: the bot's own HTTP server: `/healthz`, the web console and `/metrics`."""

    enable: bool = True
    host: str = "127.0.0.1"
    port: Port = 8560
    console: bool = True  # the web console (控制台); it opens only once `password` is set
    # as written, or a hash from `python -m web.console.password` ("pbkdf2_sha256$…")
    password: SecretStr = Field(default=SecretStr(""), validate_default=True)
    metrics: bool = False  # GET /metrics in Prometheus' format
    metrics_token: SecretStr = SecretStr("")  # when set, /metrics wants `Authorization: Bearer <token>`

    @field_validator("password")
    @classmethod
    def _password_beyond_loopback(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        host = info.data.get("host", "127.0.0.1")
        if info.data.get("console", True) and host not in LOOPBACK and not value.get_secret_value():
            raise ValueError(
                f"监听 {host} 时控制台必须设置密码，或设置 console = false "
                "(required when host is not 127.0.0.1, or set console = false)"
            )
        return value


class Settings(Section):
    """The whole validated config."""

    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    trigger: TriggerSettings = Field(default_factory=TriggerSettings)
    response: ResponseSettings = Field(default_factory=ResponseSettings)
    presets: PresetSettings = Field(default_factory=PresetSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    system: SystemSettings = Field(default_factory=SystemSettings)
    ratelimit: RatelimitSettings = Field(default_factory=RatelimitSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    voice: VoiceSettings = Field(default_factory=VoiceSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    mcp: MCPSettings = Field(default_factory=MCPSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    path: Path = Path("config.toml")
    warnings: list[str] = Field(default_factory=list)
    # v2 sections this bot does not have, one line each ("[bing]: 不再支持 ..."), for --check
    unsupported: list[str] = Field(default_factory=list)
    # Platform name -> its sections, validated by the registered models (one table or an array).
    sections: dict[str, list[Any]] = Field(default_factory=dict, exclude=True)

    def platform(self, name: str) -> list[Any]:
        """Every `[name]` section, enabled or not."""
        return self.sections.get(name, [])

    def platforms(self) -> list[tuple[str, Any]]:
        """(adapter name, section) for every enabled platform section, in registry order."""
        return [
            (name, section)
            for name, found in self.sections.items()
            for section in found
            if getattr(section, "enable", True)
        ]


# chatgpt-mirai-qq-bot v2 spelled the sampling table this way; its files keep working.
_ALIASES = {("openai", "gpt3_params"): "gpt_params"}

_PROBLEMS = {
    "missing": "缺少必填项 (required key is missing)",
    "int_parsing": "应为整数 (must be an integer)",
    "int_type": "应为整数 (must be an integer)",
    "int_from_float": "应为整数 (must be an integer)",
    "float_parsing": "应为数字 (must be a number)",
    "float_type": "应为数字 (must be a number)",
    "string_type": "应为字符串，请加引号 (must be a quoted string)",
    "bool_type": "应为 true 或 false (must be true or false)",
    "bool_parsing": "应为 true 或 false (must be true or false)",
    "list_type": '应为列表，如 ["a", "b"] (must be a list)',
    "dict_type": "应为表 (must be a table)",
    "model_type": "应为表 (must be a table)",
    "model_attributes_type": "应为表 (must be a table)",
    "finite_number": "应为有限的数字 (must be a finite number)",
    "extra_forbidden": "不允许的配置项 (this key is not allowed here)",
}


# Larger files are refused before they are read: a config or word list is a few kilobytes, and a
# path such as /dev/zero or a FIFO must end in one line, not in a hang or a MemoryError.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_WORDS_FILE_BYTES = 4 * 1024 * 1024
_SYNTAX = "(TOML 语法 syntax)"
_M = TypeVar("_M", bound=BaseModel)


def load_config(path: Path) -> Settings:
    """Read and validate the config file.

    Raises ConfigError naming the key (and its line) for anything wrong, FileNotFoundError when
    the file does not exist.
    """
    try:
        raw_bytes = read_capped(path, MAX_CONFIG_BYTES)
    except ValueError as exc:
        raise ConfigError(str(path), str(exc)) from None
    return loads_config(_decode(raw_bytes, path), path)


def loads_config(text: str, path: Path = Path("config.toml")) -> Settings:
    """Parse and validate config text as read from `path`; raises ConfigError."""
    return validate(_parse(text), text, path)


def _parse(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)  # about ten times faster than tomlkit on large files
    except Exception:  # tomlkit below decides, and gives the line number of a syntax error
        pass
    try:
        doc: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(_SYNTAX, str(exc).split(" at line")[0], exc.line) from None
    except RecursionError:
        raise ConfigError(_SYNTAX, "嵌套太深 (nested too deeply)") from None
    except Exception as exc:  # a parser failure must still end in one line, never a traceback
        raise ConfigError(_SYNTAX, f"无法解析 (cannot parse: {type(exc).__name__})") from None
    return doc


def validate(doc: dict[str, Any], text: str = "", path: Path = Path("config.toml")) -> Settings:
    """Validate an already parsed document; `text` is used to find line numbers. Raises ConfigError."""
    lines = LineIndex(text)
    doc, arrays = _normalise(doc)
    unsupported = _drop_v2_unsupported(doc, lines) + _v2_text_to_speech(doc, lines)
    v2_notes = _skip_web_login(doc, lines) + _v2_default_notes(doc)
    sections: dict[str, list[Any]] = {}
    for name, model in _PLATFORMS.items():
        tables = doc.pop(name, None)
        if tables is None:
            continue
        if not isinstance(tables, list):
            raise ConfigError(name, _PROBLEMS["dict_type"], lines.find((name,)))
        sections[name] = [_validated(model, table, (name, index), arrays, lines) for index, table in enumerate(tables)]
    settings = _validated(Settings, doc, (), arrays, lines)
    settings.sections = sections
    settings.path = path
    if not settings.openai.accounts:
        raise ConfigError(
            "openai.accounts",
            "至少需要一个 [[openai.accounts]] 账号 (add at least one [[openai.accounts]] with api_key)",
            lines.find(("openai",)),
        )
    for i, account in enumerate(settings.openai.accounts):
        if not account.name:
            account.name = f"account{i + 1}"
        if not account.api_endpoint:
            account.api_endpoint = settings.openai.api_endpoint or DEFAULT_ENDPOINT
    _check_files(settings, lines)
    _check_voice_accounts(settings, lines)
    _v2_placeholders(settings)
    unknown = _unknown_keys(settings, (), arrays)
    for name, found in sections.items():
        for index, section in enumerate(found):
            unknown += _unknown_keys(section, (name, index), arrays)
    settings.unsupported = unsupported
    settings.warnings = [
        *unsupported,
        *v2_notes,
        *(
            escape_control(f"未知配置项 unknown key {_dotted(loc)}")
            + (f" (line {line})" if (line := lines.find(loc)) else "")
            for loc in unknown
        ),
    ]
    return settings


# chatgpt-mirai-qq-bot v2 features this bot does not have: section -> (what it was, what replaces it).
_OPENAI_COMPATIBLE = (
    "请改用 [[openai.accounts]] 中任意 OpenAI 兼容接口 (use any OpenAI-compatible endpoint in [[openai.accounts]])"
)
_USE_EDGE = '请改用 [voice] tts_engine = "edge" 等 (use [voice] tts_engine)'
V2_UNSUPPORTED_SECTIONS: dict[str, tuple[str, str]] = {
    "bing": ("New Bing", _OPENAI_COMPATIBLE),
    "bard": ("Google Bard", _OPENAI_COMPATIBLE),
    "gemini": ("Google Gemini", _OPENAI_COMPATIBLE),
    "yiyan": ("文心一言 ERNIE Bot", _OPENAI_COMPATIBLE),
    "chatglm": ("ChatGLM", _OPENAI_COMPATIBLE),
    "xinghuo": ("讯飞星火 Spark", _OPENAI_COMPATIBLE),
    "poe": ("Poe", _OPENAI_COMPATIBLE),
    "slack": ("Claude in Slack", _OPENAI_COMPATIBLE),
    "azure": ("Azure TTS 语音合成", _USE_EDGE),
    "vits": ("VITS 语音合成", _USE_EDGE),
    "text_to_image": ("文字转图片 text to image", '请改用 [response] mode = "image" 或 "mixed" (use [response] mode)'),
    "baiducloud": ("百度云内容审核 Baidu moderation", "请改用 [moderation] 屏蔽词 (use [moderation] words)"),
    "sdwebui": (
        "Stable Diffusion WebUI 画图",
        "请在 [[openai.accounts]] 设置 image_model (set image_model on an OpenAI-compatible account)",
    ),
    "telegram": ("Telegram", ""),
    "discord": ("Discord", ""),
    "wecom": ("企业微信 WeCom", ""),
}
# v2 keys inside tables this bot has: table path -> key -> replacement ("" when there is none).
_WEB_LOGIN_KEY = "网页登录的设置，已不需要 (a web-login setting, no longer needed)"
_ERROR_TEXT = "请改用 [response] error_format (use [response] error_format)"
V2_UNSUPPORTED_KEYS: dict[tuple[str, ...], dict[str, str]] = {
    ("openai",): {"browserless_endpoint": _WEB_LOGIN_KEY},
    ("openai", "gpt_params"): {
        "compressed_session": "请改用 [conversation] max_history_tokens (use [conversation] max_history_tokens)",
        "compressed_tokens": "请改用 [conversation] max_history_tokens (use [conversation] max_history_tokens)",
    },
    ("trigger",): {"prefix_ai": ""},
    ("response",): {
        "default_ai": "第一个 [[openai.accounts]] 就是默认的 (the first account is the default)",
        "error_network_failure": _ERROR_TEXT,
        "error_session_authenciate_failed": _ERROR_TEXT,
        "error_request_too_many": _ERROR_TEXT,
        "error_request_concurrent_error": _ERROR_TEXT,
        "error_server_overloaded": _ERROR_TEXT,
        "error_drawing": _ERROR_TEXT,
        "placeholder": "",
    },
}
# Keys of v2's web-login accounts that mean nothing for an API-key account.
_V2_ACCOUNT_KEYS = (
    "mode",
    "driver_exec_path",
    "browser_exec_path",
    "conversation",
    "paid",
    "verbose",
    "title_pattern",
    "auto_remove_old_conversations",
)
_WEB_LOGIN = ("access_token", "session_token", "email", "password")
WEB_LOGIN_SKIPPED = "网页登录账号不再支持，请改用 API Key (web-login accounts are no longer supported; use an API key)"
V2_DEFAULT_API_KEY = "1234567890"


def _unsupported_line(what: str, replacement: str, line: int | None) -> str:
    text = f"{what} 不再支持，已忽略 (not supported, ignored)" + (f"；{replacement}" if replacement else "")
    return escape_control(text + (f" (line {line})" if line else ""))


def _drop_v2_unsupported(doc: dict[str, Any], lines: LineIndex) -> list[str]:
    """Remove v2 sections and keys this bot lacks from `doc`; one line for each, naming what replaces it."""
    found: list[str] = []
    for name, (what, replacement) in V2_UNSUPPORTED_SECTIONS.items():
        if name in doc and name not in _PLATFORMS:
            doc.pop(name)
            found.append(_unsupported_line(f"[{name}] ({what})", replacement, lines.find((name,))))
    for path, keys in V2_UNSUPPORTED_KEYS.items():
        table = _copied_table(doc, path)
        if table is None:
            continue
        for key, replacement in keys.items():
            if key in table:
                table.pop(key)
                where = lines.find((*path, key)) or lines.find((*path[:-1], "gpt3_params", key))
                found.append(_unsupported_line(f"{'.'.join(path)}.{key}", replacement, where))
    openai = doc.get("openai")
    accounts = openai.get("accounts") if isinstance(openai, dict) else None
    if isinstance(openai, dict) and isinstance(accounts, list):
        dropped: dict[str, int | None] = {}
        copies: list[Any] = []
        for index, account in enumerate(accounts):
            if isinstance(account, dict) and "api_key" in account:
                account = dict(account)
                for key in _V2_ACCOUNT_KEYS:
                    if key in account:
                        account.pop(key)
                        dropped.setdefault(key, lines.find(("openai", "accounts", index, key)))
            copies.append(account)
        doc["openai"] = {**openai, "accounts": copies}
        for key, where in dropped.items():
            found.append(_unsupported_line(f"openai.accounts.{key}", _WEB_LOGIN_KEY, where))
    return found


def _v2_text_to_speech(doc: dict[str, Any], lines: LineIndex) -> list[str]:
    """v2's `[text_to_speech]` becomes `[voice] tts_*` (keys written in `[voice]` win): engine "edge"
    stays, "azure" becomes Edge (the same neural voice names, no key needed), "vits" is not
    supported; `always` speaks to every session, with the text, as v2 did."""
    v2 = doc.pop("text_to_speech", None)
    if not isinstance(v2, dict):
        return [] if v2 is None else [_unsupported_line("[text_to_speech]", _USE_EDGE, lines.find(("text_to_speech",)))]
    notes: list[str] = []
    voice = doc["voice"] = dict(doc["voice"]) if isinstance(doc.get("voice"), dict) else {}
    engine = v2.get("engine", "azure")  # v2's default engine
    if engine == "vits":
        notes.append(
            _unsupported_line("text_to_speech.engine = vits", _USE_EDGE, lines.find(("text_to_speech", "engine")))
        )
        return notes
    if engine == "azure":
        notes.append(
            escape_control(
                "text_to_speech: Azure TTS 已改用免费的 Edge TTS，语音名相同 (Azure now uses Edge TTS, same voices)"
            )
        )
    voice.setdefault("tts_engine", "edge")
    if isinstance(v2.get("default"), str) and v2["default"]:
        voice.setdefault("tts_voice", v2["default"])
    prefixes = v2.get("default_voice_prefix")
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if isinstance(prefixes, list) and "tts_voices" not in voice:
        from voice.voices import EDGE_VOICES  # names only: no audio library is loaded

        voice["tts_voices"] = [name for name in EDGE_VOICES if any(name.startswith(str(p)) for p in prefixes)]
    if v2.get("always") is True:
        response = doc["response"] = dict(doc["response"]) if isinstance(doc.get("response"), dict) else {}
        response.setdefault("voice_mode", "both")
    return notes


def _copied_table(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The table at `path`, copied (with its parents) so the caller's document is left unchanged."""
    parent = doc
    for name in path:
        table = parent.get(name)
        if not isinstance(table, dict):
            return None
        parent[name] = table = dict(table)
        parent = table
    return parent


def _skip_web_login(doc: dict[str, Any], lines: LineIndex) -> list[str]:
    """Drop v2's web-login accounts (one line each); an error only when no usable account is left."""
    openai = doc.get("openai")
    accounts = openai.get("accounts") if isinstance(openai, dict) else None
    if not isinstance(openai, dict) or not isinstance(accounts, list):
        return []
    notes: list[str] = []
    kept: list[Any] = []
    for index, account in enumerate(accounts):
        if isinstance(account, dict) and "api_key" not in account and any(k in account for k in _WEB_LOGIN):
            where = lines.find(("openai", "accounts", index))
            notes.append(
                escape_control(f"openai.accounts[{index}]: {WEB_LOGIN_SKIPPED}") + (f" (line {where})" if where else "")
            )
            continue
        # Validated here, under the index it has in the file, so a later error names the right line.
        kept.append(
            _validated(OpenAIAccount, account, ("openai", "accounts", index), set(), lines)
            if notes and isinstance(account, dict)
            else account
        )
    if notes and not kept:
        raise ConfigError(
            "openai.accounts",
            f"{WEB_LOGIN_SKIPPED}；至少需要一个带 api_key 的账号 (at least one account with api_key is needed)",
            lines.find(("openai", "accounts", 0)),
        )
    doc["openai"] = {**openai, "accounts": kept}
    return notes


def _v2_default_notes(doc: dict[str, Any]) -> list[str]:
    """v2 gave `[mirai] api_key` a default; say it is used, so a verifyKey mismatch is easy to spot."""
    tables = doc.get("mirai")
    if isinstance(tables, list) and any(isinstance(t, dict) and "api_key" not in t for t in tables):
        return [
            f"mirai.api_key 未填写，沿用 v2 的默认值 {V2_DEFAULT_API_KEY}，须与 mirai-api-http 的 verifyKey 一致"
            f" (not set: using v2's default {V2_DEFAULT_API_KEY}; it must match mirai-api-http's verifyKey)"
        ]
    return []


def _check_voice_accounts(settings: Settings, lines: LineIndex) -> None:
    """`[voice] stt_account` / `tts_account` must name an account (the voice keys are needed where it is used)."""
    names = [account.name for account in settings.openai.accounts]
    for key in ("stt_account", "tts_account"):
        name = getattr(settings.voice, key)
        if name and name not in names:
            raise ConfigError(
                f"voice.{key}",
                f"没有名为 {name} 的账号，可用：{'、'.join(names)} (no account named {name})",
                lines.find(("voice", key)),
            )


def _v2_placeholders(settings: Settings) -> None:
    """v2's `ping_response` placeholders become ours ({current_ai} is the account) or fixed texts."""
    text = settings.response.ping_response
    if "{current_" in text or "{supported_ai}" in text:
        names = "、".join(account.name for account in settings.openai.accounts)
        text = text.replace("{current_ai}", "{account}").replace("{current_voice}", "{voice}")
        settings.response.ping_response = text.replace("{supported_ai}", names)


def _validated(model: type[_M], data: Any, loc: tuple[Any, ...], arrays: set[str], lines: LineIndex) -> _M:
    """`model` validated from `data`; every failure becomes one ConfigError naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, loc, arrays, lines) from None
    except ConfigError:
        raise
    except Exception as exc:
        # A validator that trips over a value of an unexpected type is a bug, but the user still
        # gets one line naming the table, not a traceback.
        where = loc or _failing_section(data)
        display = _display_loc(where, arrays)
        problem = f"无法使用这里的值 (a value here cannot be used: {type(exc).__name__})"
        raise ConfigError(_dotted(display) or "(config)", problem, lines.find(display)) from None


def _failing_section(doc: Any) -> tuple[Any, ...]:
    """The core section whose validation raises something other than a ValidationError."""
    if not isinstance(doc, dict):
        return ()
    for name, field in Settings.model_fields.items():
        model = field.annotation
        if name not in doc or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        try:
            model.model_validate(doc[name])
        except ValidationError:
            continue
        except Exception:
            return (name,)
    return ()


_UNION_BRANCH = re.compile(r"^(literal|list|tuple|dict|set|function-(before|after|wrap|plain))\[")


def _invalid(exc: ValidationError, prefix: tuple[Any, ...], arrays: set[str], lines: LineIndex) -> ConfigError:
    """The first problem pydantic found, as one line naming the key and its line."""
    err = exc.errors()[0]
    # pydantic names the branch of a union it tried ("literal['a','b']", "list[str]"): not a key
    keys = tuple(part for part in err["loc"] if not (isinstance(part, str) and _UNION_BRANCH.match(part)))
    loc = _display_loc((*prefix, *keys), arrays)
    return ConfigError(_dotted(loc), _problem(err["type"], err["msg"], err.get("ctx") or {}), lines.find(loc))


# Pydantic problems that carry a limit or a choice: Chinese first, the limit filled in from `ctx`.
_BOUNDED = {
    "greater_than_equal": ("ge", "应大于或等于 {0} (must be greater than or equal to {0})"),
    "greater_than": ("gt", "应大于 {0} (must be greater than {0})"),
    "less_than_equal": ("le", "应小于或等于 {0} (must be less than or equal to {0})"),
    "less_than": ("lt", "应小于 {0} (must be less than {0})"),
    "literal_error": ("expected", "应为以下之一 (must be one of): {0}"),
    "string_too_short": ("min_length", "太短，至少 {0} 个字符 (at least {0} characters)"),
    "string_too_long": ("max_length", "太长，最多 {0} 个字符 (at most {0} characters)"),
    "too_short": ("min_length", "太少，至少 {0} 项 (at least {0} items)"),
    "too_long": ("max_length", "太多，最多 {0} 项 (at most {0} items)"),
}


def _problem(kind: str, message: str, ctx: dict[str, Any]) -> str:
    """A bilingual problem text for one pydantic error; our own validators' texts already are."""
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind in _BOUNDED:
        name, text = _BOUNDED[kind]
        return text.format(ctx.get(name, "?"))
    if kind in ("value_error", "assertion_error"):
        return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"取值无效 (invalid value: {message})"


def _decode(data: bytes, path: Path) -> str:
    """Config files written on Windows may be UTF-8 with BOM or GBK; accept both."""
    try:
        return decode_text(data)
    except ValueError as exc:
        raise ConfigError(str(path), str(exc)) from None


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or GBK, as Windows Notepad saves; raises ValueError."""
    for encoding in ("utf-8-sig", "gbk"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ValueError("文件编码无法识别，请另存为 UTF-8 (save the file as UTF-8)")


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them.

    Raises FileNotFoundError when nothing is there and ValueError, with the problem in words, for a
    directory, a device, a FIFO, a file larger than `limit` or one that cannot be read.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        raise ValueError(_os_problem(exc)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError("这是一个文件夹，不是文件 (is a directory, not a file)")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("不是普通文件 (not a regular file)")
        too_large = f"文件太大，超过 {limit // (1024 * 1024)} MB (larger than {limit // (1024 * 1024)} MB)"
        if info.st_size > limit:
            raise ValueError(too_large)
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)  # files in /proc report size 0, so the cap is checked again
    except OSError as exc:
        raise ValueError(_os_problem(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(too_large)
    return data


def _os_problem(exc: OSError | ValueError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "这是一个文件夹，不是文件 (is a directory, not a file)"
    if isinstance(exc, PermissionError):
        return "没有读取权限 (permission denied)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"无法读取 (cannot read: {exc.strerror})"
    return f"路径无效 (invalid path: {exc})"


def read_words_file(path: Path) -> tuple[str, ...]:
    """The words of a `[moderation] words_file`: one a line, `#` starts a comment; raises ValueError."""
    try:
        data = read_capped(path, MAX_WORDS_FILE_BYTES)
    except FileNotFoundError:
        raise ValueError("文件不存在 (file not found)") from None
    text = decode_text(data)
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def _check_files(settings: Settings, lines: LineIndex) -> None:
    """Files named by the config must be usable now, so --check and start-up both report them."""
    try:
        settings.moderation.load_words_file()
    except ValueError as exc:
        raise ConfigError("moderation.words_file", str(exc), lines.find(("moderation", "words_file"))) from None
    problem = _log_file_problem(settings.log)
    if problem is not None:
        key, text = problem
        raise ConfigError(f"log.{key}", text, lines.find(("log", key)))


def _log_file_problem(log: LogSettings) -> tuple[str, str] | None:
    """(key, problem) when `[log] file` could not be opened by setup_logging, else None."""
    if not log.file:
        return None
    try:
        target = Path(log.file.format_map({"time": datetime.now()}))  # loguru fills in {time}
    except Exception:
        return "file", "文件名里的 { } 只能写 {time} (only {time} may appear in braces)"
    try:
        info: os.stat_result | None = target.stat()
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:
        return "file", _os_problem(exc).replace("无法读取 (cannot read", "无法使用 (cannot use")
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            return "file", "这是一个文件夹，请写文件路径，如 logs/bot.log (a directory; name a file like logs/bot.log)"
        if not stat.S_ISREG(info.st_mode):
            return "file", "不是普通文件，日志文件会被轮换改名 (not a regular file; log files are rotated)"
        try:
            with target.open("ab"):
                pass
        except OSError as exc:
            return "file", f"无法写入 (cannot write: {exc.strerror or type(exc).__name__})"
    else:
        for folder in target.absolute().parents:  # setup_logging creates the missing folders
            try:
                folder_info = folder.stat()
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                return "file", _os_problem(exc).replace("无法读取 (cannot read", "无法使用 (cannot use")
            if not stat.S_ISDIR(folder_info.st_mode):
                return "file", f"{folder} 不是文件夹 (is not a directory)"
            if not os.access(folder, os.W_OK | os.X_OK):
                return "file", f"没有在 {folder} 中创建文件的权限 (cannot create files in {folder})"
            break
    try:
        # A sink that never opens the file and, stopped with a rotation set, runs no retention:
        # loguru itself parses the rotation.
        sink = logger.add(log.file, rotation=log.rotation, delay=True, filter=lambda _: False)
    except Exception:
        return "rotation", '无法识别，请写成 "10 MB" 或 "1 day" 的形式 (use a size like "10 MB" or a time like "1 day")'
    logger.remove(sink)
    return None


def _normalise(doc: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Platform sections may be one table or an array of tables; make them lists."""
    doc = dict(doc)
    arrays: set[str] = set()
    for name in _PLATFORMS:
        value = doc.get(name)
        if isinstance(value, list):
            arrays.add(name)
        elif isinstance(value, dict):
            doc[name] = [value]
    for (section, old), new in _ALIASES.items():
        table = doc.get(section)
        if isinstance(table, dict) and old in table and new not in table:
            table = dict(table)
            table[new] = table.pop(old)
            doc[section] = table
    return doc, arrays


def _display_loc(loc: tuple[Any, ...], arrays: set[str]) -> tuple[Any, ...]:
    """Drop the list index pydantic adds for a platform section written as one table."""
    if len(loc) >= 2 and loc[0] in _PLATFORMS and loc[0] not in arrays and loc[1] == 0:
        return (loc[0], *loc[2:])
    return tuple(loc)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unknown_keys(model: BaseModel, loc: tuple[Any, ...], arrays: set[str]) -> list[tuple[Any, ...]]:
    found = [_display_loc((*loc, key), arrays) for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += _unknown_keys(value, (*loc, name), arrays)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += _unknown_keys(item, (*loc, name, i), arrays)
    return found


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")


def find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the key at `loc` (or of its table when the key is absent)."""
    return LineIndex(text).find(loc)


class LineIndex:
    """Where each key and table header of a config text is, read in one pass; lookups cost O(1).

    Keys are found in the table they belong to; an index in `loc` picks one `[[table]]` element
    (a plain `[table]` header matches any index).
    """

    def __init__(self, text: str) -> None:
        # (table, element index or -1 for a plain table, key) -> first line; also for any element
        self._keys: dict[tuple[str, int, str], int] = {}
        self._keys_any: dict[tuple[str, str], int] = {}
        # table -> first header line; (table, element index or -1) -> last header line
        self._first_header: dict[str, int] = {}
        self._last_header: dict[tuple[str, int], int] = {}
        self._last_header_any: dict[str, int] = {}
        current, seen_index = "", -1
        counts: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                current = header.group(2).replace(" ", "").replace('"', "")
                if header.group(1) == "[[":
                    counts[current] = seen_index = counts.get(current, -1) + 1
                else:
                    seen_index = -1
                self._first_header.setdefault(current, number)
                self._last_header[(current, seen_index)] = number
                self._last_header_any[current] = number
                continue
            match = _KEY.match(line)
            if match:
                key = _unescaped(match.group(1)) if match.group(1) else next(g for g in match.groups() if g)
                self._keys.setdefault((current, seen_index, key), number)
                self._keys_any.setdefault((current, key), number)

    def find(self, loc: tuple[Any, ...]) -> int | None:
        """The 1-based line of the key at `loc` (or of its table when the key is absent)."""
        if not loc or (not self._last_header_any and not self._keys_any):
            return None
        *table_loc, key = loc
        if isinstance(key, int):  # the element of an array of tables itself
            table_loc, key = [*table_loc, key], None
        table = ".".join(str(p) for p in table_loc if not isinstance(p, int))
        index = next((p for p in reversed(table_loc) if isinstance(p, int)), None)
        if key is not None:
            if index is None:
                found = self._keys_any.get((table, str(key)))
            else:
                lines = (self._keys.get((table, index, str(key))), self._keys.get((table, -1, str(key))))
                found = min((n for n in lines if n is not None), default=None)
            if found is not None:
                return found
        own_header = self._first_header.get(".".join(str(p) for p in loc if not isinstance(p, int)))
        if own_header is not None:
            return own_header
        if key is not None and not table:
            return None
        if index is None:
            return self._last_header_any.get(table)
        headers = (self._last_header.get((table, index)), self._last_header.get((table, -1)))
        return max((n for n in headers if n is not None), default=None)


def _unescaped(quoted: str) -> str:
    """A double-quoted key as TOML reads it (`"a\\u001b"` is the key "a" + ESC)."""
    if "\\" not in quoted:
        return quoted
    try:
        return next(iter(tomllib.loads(f'"{quoted}" = 0')))
    except (tomllib.TOMLDecodeError, StopIteration):
        return quoted


# Field names whose string values are secrets: api_key, access_token, secret, token, password, ...
_SECRET_NAME = re.compile(r"(key|token|secret|password|passwd|authorization)$", re.IGNORECASE)


def collect_secrets(settings: Settings) -> list[str]:
    """Every configured secret, for the log redactor: SecretStr values, strings in fields named like
    `*key`/`*token`/`*secret`/`*password` (platform sections and unknown keys included) and passwords
    or token parameters inside URLs."""
    found: list[str] = []
    _collect(settings, "", found, 0)
    # v2's published default verifyKey is no secret; masking it would hide what the SECURITY warning names
    return list(dict.fromkeys(s for s in found if s and s != V2_DEFAULT_API_KEY))


def _collect(value: Any, name: str, found: list[str], depth: int) -> None:
    if depth > 32:
        return
    if isinstance(value, SecretStr):
        found.append(value.get_secret_value())
    elif isinstance(value, str):
        if _SECRET_NAME.search(name):
            found.append(value)
        if "://" in value:
            found.extend(_url_secrets(value))
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            _collect(getattr(value, field, None), field, found, depth + 1)
        for key, item in (value.model_extra or {}).items():
            _collect(item, str(key), found, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect(item, str(key), found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, name, found, depth + 1)


def _url_secrets(url: str) -> list[str]:
    """The password and the token-like query parameters of a URL (`postgresql://u:PASS@h/db`)."""
    try:
        parts = urlsplit(url.strip())
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if _SECRET_NAME.search(k) or k.lower() in ("sig", "signature")]
    except ValueError:
        return []
    return found
