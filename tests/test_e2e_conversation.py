"""Conversation features end to end: triggers, presets, commands, queues, limits, admin, moderation."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

ADMIN = 20099
GROUP = 30001


class Chat:
    """A running bot with a fake Mirai; helpers send a message and collect what the bot says back."""

    def __init__(self, app: Any, mirai: FakeMirai, config: Path) -> None:
        self.app = app
        self.mirai = mirai
        self.config = config
        self.ids = 100

    async def push(self, event: dict[str, Any], replies: int = 1, quiet: float = 0.0) -> list[str]:
        seen = len(self.mirai.commands)
        await self.mirai.push(event)
        if replies == 0:
            await asyncio.sleep(quiet or 0.3)
            assert len(self.mirai.commands) == seen, [sent_text(c) for c in self.mirai.commands[seen:]]
            return []
        commands = await self.mirai.wait_commands(seen + replies)
        if quiet:
            await asyncio.sleep(quiet)
        return [sent_text(c) for c in commands[seen:]]

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    async def private(self, text: str, user: int = 20001, replies: int = 1) -> list[str]:
        return await self.push(friend_message(user, text, self.next_id()), replies)

    async def group(self, text: str, user: int = 20001, at: bool = True, replies: int = 1, **kw: Any) -> list[str]:
        event = group_message(GROUP, user, text, self.next_id(), at=BOT_QQ if at else None, **kw)
        return await self.push(event, replies)


@pytest.fixture
async def launch(write_config: Callable[..., Path], tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[Chat] = []

    async def start(extra: dict[str, Any] | None = None, presets: dict[str, str] | None = None) -> Chat:
        extra = dict(extra or {})
        extra.setdefault("mirai", {})["manager_qq"] = ADMIN
        config = write_config(extra)
        for name, text in (presets or {}).items():
            (tmp_path / "presets" / f"{name}.txt").write_text(text, encoding="utf-8")
        app = await start_bot(config)
        mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
        await mirai.connect()
        running.append(Chat(app, mirai, config))
        return running[-1]

    yield start
    for chat in running:
        await chat.mirai.close()
        await chat.app.stop()


def last_user_turn(fake_llm: FakeOpenAI) -> Any:
    return fake_llm.requests[-1]["body"]["messages"][-1]["content"]


# --- triggers ------------------------------------------------------------------------------------


async def test_trigger_matrix(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"trigger": {"prefix": ["ai"], "prefix_friend": ["私"], "ignore_regex": ["^忽略"]}})
    assert await chat.private("你好", replies=0) == []  # no prefix
    assert await chat.private("ai 你好") == ["echo: 你好"]
    assert await chat.private("私你好") == ["echo: 你好"]
    assert await chat.group("私你好", replies=0) == []  # prefix_friend is private-only
    assert await chat.group("ai群里", at=False, replies=0) == []  # require_mention = at
    assert await chat.group("ai群里") == ["echo: 群里"]
    assert await chat.private("ai忽略我", replies=0) == []
    # a quote element before the text does not hide the prefix
    quote = {"id": 5, "groupId": GROUP, "senderId": 20002, "targetId": GROUP, "origin": []}
    assert await chat.group("ai 引用后", quote=quote) == ["echo: 引用后"]


async def test_mention_mode_accepts_the_bot_name(launch: Any) -> None:
    chat = await launch({"trigger": {"require_mention": "mention"}})
    for _ in range(50):  # the nickname is learned from botProfile after verify
        if chat.app.adapters["mirai"].nickname:
            break
        await asyncio.sleep(0.02)
    assert await chat.group("小助手，讲个笑话", at=False) == ["echo: 讲个笑话"]
    assert await chat.group("讲个笑话", at=False, replies=0) == []
    assert await chat.group("直接@也行") == ["echo: 直接@也行"]


async def test_no_mention_needed_in_none_mode(launch: Any) -> None:
    chat = await launch({"trigger": {"require_mention": "none"}})
    assert await chat.group("随便说", at=False) == ["echo: 随便说"]


# --- presets -------------------------------------------------------------------------------------


async def test_presets_load_list_survive_reset_and_restart(
    launch: Any, fake_llm: FakeOpenAI, write_config: Callable[..., Path]
) -> None:
    cat = "system: 你是一只猫。\n\nuser: 你是谁？\n\nassistant: 喵。\n\nuser_send: {nickname}说：{prompt}"
    chat = await launch({"presets": {"keywords": {"猫": "catgirl"}}}, presets={"catgirl": cat, "broken": ""})
    [listing] = await chat.private("预设列表")
    assert "catgirl" in listing and "default" in listing
    assert await chat.private("加载预设 不存在") == [
        "没有找到预设 不存在。可用的预设：" + "、".join(chat.app.presets.names())
    ]
    assert await chat.private("加载预设 猫") == ["预设加载成功！"]
    await chat.private("你好")
    messages = fake_llm.requests[-1]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "你是一只猫。"}
    assert messages[1:3] == [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "喵。"}]
    assert messages[-1] == {"role": "user", "content": "friend说：你好"}
    assert await chat.private("重置会话") == ["会话已重置。"]
    await chat.private("还是猫吗")
    assert fake_llm.requests[-1]["body"]["messages"][0]["content"] == "你是一只猫。"
    await chat.mirai.close()
    await chat.app.stop()
    again = await launch()
    await again.private("重启后")
    assert fake_llm.requests[-1]["body"]["messages"][0]["content"] == "你是一只猫。"


async def test_unreadable_preset_is_logged_and_the_bot_runs(launch: Any, tmp_path: Path, log_lines: list[str]) -> None:
    (tmp_path / "presets").mkdir(exist_ok=True)
    (tmp_path / "presets" / "bad.txt").write_bytes(b"\xff\xff\xff")  # neither UTF-8, UTF-16 nor GBK
    chat = await launch()
    assert any("bad.txt" in line for line in log_lines)
    assert await chat.private("还活着吗") == ["echo: 还活着吗"]


# --- commands ------------------------------------------------------------------------------------


async def test_help_lists_what_the_sender_may_use(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"trigger": {"allow_switching_ai": False}})
    [user_help] = await chat.private("帮助")
    [admin_help] = await chat.private("/help", user=ADMIN)
    assert "重置会话" in user_help and "切换AI" not in user_help and ".设置" not in user_help
    assert "切换AI" in admin_help and ".设置" in admin_help and ".状态" in admin_help
    assert await chat.private("/reset") == ["会话已重置。"]
    assert await chat.private("/model m1") == ["已切换到模型 m1。"]
    assert fake_llm.requests == []  # commands never reach the model


async def test_help_lists_only_commands_that_work_with_this_config(launch: Any, fake_llm: FakeOpenAI) -> None:
    # one account with one model and no image_model: nothing to draw with, nowhere to switch to
    chat = await launch()
    [user_help] = await chat.private("帮助")
    assert "画 <描述>" not in user_help and "切换模型" not in user_help
    assert "停止：停止正在进行的回答" in user_help and "ping：" in user_help and "切换AI" in user_help
    [admin_help] = await chat.private("帮助", user=ADMIN)
    assert "切换模型" in admin_help and "画 <描述>" not in admin_help
    account = {"name": "main", "api_key": "sk-test-1", "api_endpoint": fake_llm.base_url, "model": "m1"}
    drawing = await launch(
        {
            "openai": {"accounts": [{**account, "image_model": "dall-e-3"}]},
            "trigger": {"allowed_models": ["m1", "m2"], "prefix_image": ["绘制"]},
        }
    )
    [user_help] = await drawing.private("帮助")
    assert "绘制 <描述>：画一张图" in user_help and "切换模型 <模型>（/model）：m1、m2" in user_help
    assert fake_llm.requests == []


async def test_admin_commands_are_silent_for_others(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch()
    for command in (".状态", ".预设列表", ".拉黑 123", ".设置 好友 默认 额度为 1 条/小时", ".重新加载配置文件"):
        assert await chat.private(command, replies=0) == []
    assert fake_llm.requests == []
    [status] = await chat.private(".状态", user=ADMIN)
    assert "运行时间" in status and "mirai 在线" in status


async def test_blacklist_user_group_and_member(launch: Any) -> None:
    chat = await launch()
    assert await chat.private(".拉黑 20001", user=ADMIN) == ["已拉黑 20001。"]
    assert await chat.private("被拉黑了", replies=0) == []
    assert await chat.group("群里也不行", replies=0) == []
    assert await chat.private(".解除拉黑 20001", user=ADMIN) == ["已解除拉黑 20001。"]
    assert await chat.private(f".拉黑 20002 {GROUP}", user=ADMIN) == [f"已拉黑 群 {GROUP} 中的 20002。"]
    assert await chat.group("在这个群不行", user=20002, replies=0) == []
    assert await chat.private("私聊可以", user=20002) == ["echo: 私聊可以"]
    assert await chat.private(f".拉黑 {GROUP}", user=ADMIN) == [f"已拉黑 {GROUP}。"]
    assert await chat.group("整个群都不行", user=20003, replies=0) == []


# --- responding ----------------------------------------------------------------------------------


async def test_queue_notice_and_queue_full(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"response": {"max_queue_size": 3, "queued_notice_size": 2}})
    fake_llm.latency = 0.3
    await chat.mirai.push(friend_message(20001, "第0条", 500))
    await eventually(lambda: fake_llm.requests)  # the first is being answered; the rest wait in the queue
    for n in range(1, 6):
        await chat.mirai.push(friend_message(20001, f"第{n}条", 500 + n))
    commands = await chat.mirai.wait_commands(8, timeout=10)
    await asyncio.sleep(0.3)
    texts = [sent_text(c) for c in chat.mirai.commands]
    assert "消息已收到！当前我还有2条消息要回复，请您稍等。" in texts
    assert "消息已收到！当前我还有3条消息要回复，请您稍等。" in texts
    assert texts.count("抱歉！我现在要回复的人有点多，暂时没有办法接收新的消息了，请过会儿再给我发吧！") == 2
    answers = [t for t in texts if t.startswith("echo:")]
    assert answers == ["echo: 第0条", "echo: 第1条", "echo: 第2条", "echo: 第3条"]
    assert len(commands) >= 8


async def test_one_busy_group_cannot_take_every_slot(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"conversation": {"max_concurrency": 3, "group_concurrency": 2}})
    fake_llm.latency = 0.6
    for user in range(20010, 20015):  # five members of one group ask at once
        await chat.mirai.push(group_message(GROUP, user, "群问题", chat.next_id(), at=BOT_QQ))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await chat.mirai.push(friend_message(20001, "私聊问题", chat.next_id()))
    await eventually(lambda: any(c["command"] == "sendFriendMessage" for c in chat.mirai.commands))
    # the group holds 2 of the 3 slots, so the private question got the third at once (one LLM latency);
    # without the group cap it would wait for a group answer to free a slot (two latencies)
    assert loop.time() - started < 1.0


async def test_image_mode_sends_a_rendered_picture(launch: Any, fake_llm: FakeOpenAI) -> None:
    from PIL import Image as PILImage

    fake_llm.reply_fn = lambda body: "# 标题\n\n- 第一点\n- 第二点\n\n```python\nprint('hi')\n```"
    chat = await launch({"response": {"mode": "image"}})
    await chat.mirai.push(friend_message(20001, "渲染成图片", 900))
    [command] = await chat.mirai.wait_commands(1)
    [element] = command["content"]["messageChain"]
    assert element["type"] == "Image", element
    picture = PILImage.open(io.BytesIO(base64.b64decode(element["base64"])))
    assert element["type"] == "Image" and picture.format == "PNG" and picture.width == 1000


async def test_mixed_mode_renders_only_long_answers(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"response": {"mode": "mixed", "image_threshold": 50}})
    assert await chat.private("短") == ["echo: 短"]
    fake_llm.reply_fn = lambda body: "很长的回答。" * 20
    await chat.mirai.push(friend_message(20001, "长", 901))
    commands = await chat.mirai.wait_commands(2)
    assert commands[-1]["content"]["messageChain"][0]["type"] == "Image"


async def test_mode_commands_change_one_session_and_survive_a_restart(
    launch: Any, fake_llm: FakeOpenAI, write_config: Callable[..., Path]
) -> None:
    chat = await launch({"response": {"image_threshold": 50}})

    async def kinds(text: str, user: int = 20001) -> list[str]:
        seen = len(chat.mirai.commands)
        await chat.mirai.push(friend_message(user, text, chat.next_id()))
        [command] = (await chat.mirai.wait_commands(seen + 1))[seen:]
        return [element["type"] for element in command["content"]["messageChain"]]

    assert await chat.private("图片模式") == ["已切换至纯图片模式，接下来我的回复将会以图片呈现！"]
    assert await kinds("短") == ["Image"]
    assert await kinds("别人的会话", user=20002) == ["Plain"]  # [response] mode stays text for others
    [ping] = await chat.private("ping")
    assert "当前模型" in ping
    assert await chat.private("图文混合模式") == ["已切换至图文混合模式，接下来我的回复将会以图文混合的方式呈现！"]
    assert await kinds("短") == ["Plain"]
    fake_llm.reply_fn = lambda body: "很长的回答。" * 20
    assert await kinds("长") == ["Image"]
    await chat.mirai.close()
    await chat.app.stop()
    again = await launch({"response": {"image_threshold": 50}})
    seen = len(again.mirai.commands)
    await again.mirai.push(friend_message(20001, "重启后", 990))
    [command] = (await again.mirai.wait_commands(seen + 1))[seen:]
    assert command["content"]["messageChain"][0]["type"] == "Image"  # still mixed after the restart
    assert await again.private("文本模式") == ["已切换至纯文字模式，接下来我的回复将会以文字呈现（被吞除外）！"]
    assert await again.private("又一个长回答") == ["很长的回答。" * 20]


async def test_mode_commands_follow_the_config_words(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch(
        {
            "trigger": {"image_only_command": ["出图"], "text_only_command": []},
            "response": {"switched_to_image": "好的，出图。"},
        }
    )
    assert await chat.private("文本模式") == ["echo: 文本模式"]  # no longer a command: chat
    assert await chat.private("出图") == ["好的，出图。"]
    [help_text] = await chat.private("帮助")
    assert "图文混合模式、出图：" in help_text


# --- rate limits ---------------------------------------------------------------------------------


async def test_hourly_limits_warning_and_exceed(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"ratelimit": {"warning_rate": 0.5}})
    assert await chat.private(".设置 好友 默认 额度为 2 条/小时", user=ADMIN) == [
        "已设置好友 默认 的额度为 2 条/小时。"
    ]
    first = await chat.private("一", replies=2)
    assert first[0] == "echo: 一" and first[1].startswith("警告：额度即将耗尽！\n目前已发送：1条消息，最大限制为2条")
    await chat.private("二", replies=2)
    assert await chat.private("三") == ["已达到额度限制，请等待下一小时继续和我对话。"]
    assert len(fake_llm.requests) == 2
    [usage] = await chat.private(".查看 好友 20001 的使用情况", user=ADMIN)
    assert usage == "好友 20001 最近一小时已使用 2 条，额度 2 条/小时。"
    assert await chat.private(".设置 群组 默认 额度为 1 条/小时", user=ADMIN) == [
        "已设置群组 默认 的额度为 1 条/小时。"
    ]
    assert (await chat.group("群一", user=20005, replies=2))[0] == "echo: 群一"  # and the warning
    assert await chat.group("群二", user=20006) == ["已达到额度限制，请等待下一小时继续和我对话。"]
    [hint] = await chat.private(".设置 成员 20005 额度为 1 条/小时", user=ADMIN)
    assert hint.startswith("成员请写成 群号:QQ号")
    assert await chat.private(f".设置 成员 {GROUP}:20007 额度为 0 条/小时", user=ADMIN) == [
        f"已设置成员 {GROUP}:20007 的额度为 0 条/小时。"
    ]
    assert await chat.private(".设置 群组 默认 额度为 100 条/小时", user=ADMIN)
    assert await chat.group("成员被限", user=20007) == ["已达到额度限制，请等待下一小时继续和我对话。"]


async def test_drawing_limits_are_their_own(launch: Any, fake_llm: FakeOpenAI) -> None:
    account = {"name": "p", "api_key": "sk-a", "api_endpoint": fake_llm.base_url, "image_model": "dall-e-3"}
    chat = await launch({"openai": {"accounts": [account]}, "ratelimit": {"warning_rate": 0.5}})
    assert await chat.private(".设置 好友 默认 画图额度为 2 个/小时", user=ADMIN) == [
        "已设置好友 默认 的画图额度为 2 个/小时。"
    ]
    assert await chat.private(".查看 好友 默认 的画图使用情况", user=ADMIN) == ["好友的默认画图额度：2 个/小时。"]
    assert await chat.private(".查看 好友 默认 的使用情况", user=ADMIN) == ["好友的默认额度：不限。"]

    async def draw(prompt: str, replies: int) -> list[dict[str, Any]]:
        seen = len(chat.mirai.commands)
        await chat.mirai.push(friend_message(20001, f"画 {prompt}", chat.next_id()))
        return (await chat.mirai.wait_commands(seen + replies))[seen:]

    picture, warning = await draw("猫", replies=2)
    assert picture["content"]["messageChain"][0]["type"] == "Image"
    assert sent_text(warning).startswith("警告：额度即将耗尽！\n目前已画：1个图，最大限制为2个图")
    await draw("狗", replies=2)
    [refused] = await draw("鸟", replies=1)
    assert sent_text(refused) == "已达到额度限制，请等待下一小时再使用画图功能。"
    assert len(fake_llm.image_requests) == 2
    # chatting is not limited by the drawing limit, nor counted against it
    assert await chat.private("聊天不受影响") == ["echo: 聊天不受影响"]
    assert await chat.private(".查看 好友 20001 的画图使用情况", user=ADMIN) == [
        "好友 20001 最近一小时已画 2 个，画图额度 2 个/小时。"
    ]
    assert await chat.private(".查看 好友 20001 的使用情况", user=ADMIN) == [
        "好友 20001 没有额度限制（没有额度时不统计用量）。"
    ]
    # v2 wrote the target right before the words, and 张 is understood too
    assert await chat.private(".设置 群组 30001画图额度为 0 张/小时", user=ADMIN) == [
        "已设置群组 30001 的画图额度为 0 个/小时。"
    ]
    assert await chat.group("画 群里的画") == ["已达到额度限制，请等待下一小时再使用画图功能。"]


# --- reload --------------------------------------------------------------------------------------


async def test_reload_applies_everywhere_or_keeps_the_old_config(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch()
    text = chat.config.read_text(encoding="utf-8")
    chat.config.write_text(text + '\n[moderation]\nwords = ["禁词"]\n', encoding="utf-8")
    chat.config.write_text(
        chat.config.read_text(encoding="utf-8").replace("[response]", '[response]\nreset = "新的重置回复"'),
        encoding="utf-8",
    )
    assert await chat.private(".重新加载配置文件", user=ADMIN) == ["配置已重新加载。"]
    assert await chat.private("重置会话") == ["新的重置回复"]
    assert await chat.private("含有禁词的问题") == ["你的消息包含不允许的内容，换个说法吧。"]
    chat.config.write_text(
        chat.config.read_text(encoding="utf-8").replace('"新的重置回复"', "broken"), encoding="utf-8"
    )
    [refused] = await chat.private(".重新加载配置文件", user=ADMIN)
    assert refused.startswith("配置文件有误，仍在使用原来的配置。") and "line" in refused
    assert await chat.private("重置会话") == ["新的重置回复"]
    assert await chat.private("还在工作") == ["echo: 还在工作"]


# --- moderation ----------------------------------------------------------------------------------


async def test_moderation_refuses_input_and_masks_output(launch: Any, fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    words_file = tmp_path / "words.txt"
    words_file.write_text("# 注释\n坏词\n", encoding="utf-8")
    chat = await launch({"moderation": {"words": ["敏感"], "words_file": str(words_file)}})
    assert await chat.private("这是敏感内容") == ["你的消息包含不允许的内容，换个说法吧。"]
    assert await chat.private("这有坏词") == ["你的消息包含不允许的内容，换个说法吧。"]
    assert fake_llm.requests == []
    fake_llm.reply_fn = lambda body: "模型说了坏词和敏感的话"
    assert await chat.private("正常问题") == ["模型说了**和**的话"]
    await chat.private("下一句")
    stored = fake_llm.requests[-1]["body"]["messages"][-2]
    assert stored == {"role": "assistant", "content": "模型说了**和**的话"}


async def test_moderation_refuse_mode_withholds_the_answer(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch({"moderation": {"words": ["机密"], "output_mode": "refuse"}})
    fake_llm.reply_fn = lambda body: "这是机密信息"
    assert await chat.private("告诉我") == ["这个回答包含不允许的内容，已被拦截。"]
    fake_llm.reply_fn = lambda body: "好的"
    await chat.private("那算了")
    assert [m["role"] for m in fake_llm.requests[-1]["body"]["messages"]] == ["system", "user"]


# --- sessions ------------------------------------------------------------------------------------


async def test_idle_session_starts_over_but_keeps_its_preset(launch: Any, fake_llm: FakeOpenAI) -> None:
    chat = await launch(
        {"system": {"auto_reset_timeout_seconds": 1}},
        presets={"pirate": "system: 你是海盗。"},
    )
    assert await chat.private("加载预设 pirate") == ["预设加载成功！"]
    await chat.private("第一句")
    await asyncio.sleep(1.3)
    await chat.private("很久以后")
    messages = fake_llm.requests[-1]["body"]["messages"]
    assert messages == [{"role": "system", "content": "你是海盗。"}, {"role": "user", "content": "很久以后"}]
