"""`[voice]`, `[response] voice_*`, `[trigger] switch_voice` and v2's `[text_to_speech]`."""

from __future__ import annotations

import pytest

from core.config import collect_secrets, loads_config
from core.errors import ConfigError

ACCOUNTS = '[[openai.accounts]]\nname = "main"\napi_key = "sk-main-key-0001"\n'


def test_voice_is_off_unless_configured() -> None:
    settings = loads_config(ACCOUNTS)
    assert not settings.voice.stt_enabled and not settings.voice.tts_enabled
    assert settings.response.voice_mode == "off"
    assert settings.trigger.switch_voice == "切换语音 (.+)"
    assert not settings.warnings


def test_voice_keys_are_read_and_their_secrets_collected() -> None:
    settings = loads_config(
        ACCOUNTS
        + '[voice]\nstt_model = "whisper-1"\nstt_account = "main"\nstt_api_key = "sk-stt-own-key-9"\n'
        + 'tts_engine = "openai"\ntts_voice = "nova"\ntts_max_chars = 120\ntts_api_key = "sk-tts-own-key-8"\n'
        + '[response]\nvoice_mode = "voice"\n'
    )
    assert settings.voice.stt_enabled and settings.voice.tts_enabled
    assert (settings.voice.tts_voice, settings.voice.tts_max_chars, settings.response.voice_mode) == (
        "nova",
        120,
        "voice",
    )
    secrets = collect_secrets(settings)
    assert "sk-stt-own-key-9" in secrets and "sk-tts-own-key-8" in secrets
    assert not settings.warnings


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[voice]\nstt_account = "nobody"\n', "voice.stt_account"),
        ('[voice]\ntts_account = "nobody"\n', "voice.tts_account"),
        ('[voice]\ntts_engine = "azure"\n', "voice.tts_engine"),
        ("[voice]\ntts_max_chars = 0\n", "voice.tts_max_chars"),
        ('[response]\nvoice_mode = "always"\n', "response.voice_mode"),
        ('[trigger]\nswitch_voice = "切换语音 ("\n', "trigger.switch_voice"),
    ],
)
def test_bad_voice_values_are_one_line_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads_config(ACCOUNTS + text)
    assert caught.value.key == key
    assert caught.value.line is not None


def test_v2_text_to_speech_with_edge_speaks_to_everyone_when_always() -> None:
    settings = loads_config(
        ACCOUNTS + '[text_to_speech]\nalways = true\nengine = "edge"\ndefault = "zh-CN-YunxiNeural"\n'
        '[trigger]\nswitch_voice = "换声音 (.+)"\n'
    )
    assert (settings.voice.tts_engine, settings.voice.tts_voice) == ("edge", "zh-CN-YunxiNeural")
    assert settings.response.voice_mode == "both"
    assert settings.trigger.switch_voice == "换声音 (.+)"
    assert not settings.warnings  # nothing of it is dropped


def test_v2_azure_becomes_edge_and_vits_is_one_unsupported_line() -> None:
    azure = loads_config(ACCOUNTS + '[text_to_speech]\nengine = "azure"\ndefault_voice_prefix = ["zh-TW"]\n')
    assert azure.voice.tts_engine == "edge" and azure.response.voice_mode == "off"
    assert azure.voice.tts_voices and all(name.startswith("zh-TW") for name in azure.voice.tts_voices)
    assert any("Edge TTS" in line for line in azure.warnings)
    vits = loads_config(ACCOUNTS + '[text_to_speech]\nengine = "vits"\n')
    assert not vits.voice.tts_enabled
    [line] = vits.warnings
    assert "vits" in line and "不再支持" in line and "(line 5)" in line


def test_keys_written_in_voice_win_over_v2_text_to_speech() -> None:
    settings = loads_config(
        ACCOUNTS + '[voice]\ntts_engine = "espeak"\ntts_voice = "en"\n'
        '[text_to_speech]\nengine = "edge"\ndefault = "zh-CN-XiaoyiNeural"\nalways = true\n'
        '[response]\nvoice_mode = "voice"\n'
    )
    assert (settings.voice.tts_engine, settings.voice.tts_voice, settings.response.voice_mode) == (
        "espeak",
        "en",
        "voice",
    )


def test_v2_ping_placeholders_name_the_voice() -> None:
    settings = loads_config(
        ACCOUNTS + '[response]\nping_response = "当前AI：{current_ai} / 当前语音：{current_voice}"\n'
    )
    assert settings.response.ping_response == "当前AI：{account} / 当前语音：{voice}"


def test_tool_access_takes_group_numbers_or_strings() -> None:
    settings = loads_config(ACCOUNTS + '[tools]\nallowed = { web_fetch = [123, "456"], time = "admins" }\n')
    assert settings.tools.allowed == {"web_fetch": ["123", "456"], "time": "admins"}
    with pytest.raises(ConfigError) as caught:
        loads_config(ACCOUNTS + '[tools]\ndefault_access = "nobody"\n')
    assert caught.value.key == "tools.default_access"
