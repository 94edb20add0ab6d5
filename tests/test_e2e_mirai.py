"""End to end through real sockets: fake mirai-api-http ⇄ bot ⇄ fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BOT_QQ, VERIFY_KEY, RunningBot, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text
from tests.fakes.openai_server import FakeOpenAI


def user_turns(request: dict) -> list[tuple[str, str]]:
    """(role, content) of every message the model received, system prompt excluded."""
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"]


async def test_private_round_trip(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(friend_message(20001, "你好", 1))
    [command] = await bot.mirai.wait_commands(1)
    assert command["command"] == "sendFriendMessage"
    assert command["content"]["target"] == 20001
    assert "quote" not in command["content"]  # private replies are not quoted
    assert sent_text(command) == "echo: 你好"
    messages = fake_llm.requests[0]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "你是测试机器人。"}
    assert messages[-1] == {"role": "user", "content": "你好"}
    assert fake_llm.requests[0]["body"]["model"] == "m1"


async def test_group_at_round_trip_quotes_the_user(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(group_message(30001, 20001, "讲个笑话", 77, at=BOT_QQ))
    [command] = await bot.mirai.wait_commands(1)
    assert command["command"] == "sendGroupMessage"
    assert command["content"]["target"] == 30001
    assert command["content"]["quote"] == 77
    assert sent_text(command) == "echo: 讲个笑话"  # the @bot mention is not part of the prompt


async def test_group_message_without_at_is_ignored(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(group_message(30001, 20001, "大家好", 1))
    await bot.mirai.push(group_message(30001, 20001, "@别人", 2, at=55555))
    await bot.mirai.push(friend_message(20002, "marker", 3))
    commands = await bot.mirai.wait_commands(1)
    await asyncio.sleep(0.2)
    assert [sent_text(c) for c in bot.mirai.commands] == ["echo: marker"]
    assert len(commands) == 1 and len(fake_llm.requests) == 1


async def test_replying_to_the_bot_counts_as_mention(bot: RunningBot) -> None:
    quote = {
        "id": 5,
        "groupId": 30001,
        "senderId": BOT_QQ,
        "targetId": 30001,
        "origin": [{"type": "Plain", "text": "x"}],
    }
    await bot.mirai.push(group_message(30001, 20001, "继续说", 6, quote=quote))
    [command] = await bot.mirai.wait_commands(1)
    assert sent_text(command) == "echo: [引用: x]\n继续说"  # the quoted text is context for the model


async def test_second_message_carries_the_first_exchange(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(friend_message(20001, "第一句", 1))
    await bot.mirai.wait_commands(1)
    await bot.mirai.push(friend_message(20001, "第二句", 2))
    await bot.mirai.wait_commands(2)
    assert user_turns(fake_llm.requests[1]) == [
        ("user", "第一句"),
        ("assistant", "echo: 第一句"),
        ("user", "第二句"),
    ]


async def test_two_users_histories_never_mix(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(friend_message(20001, "我是甲", 1))
    await bot.mirai.wait_commands(1)
    await bot.mirai.push(group_message(30001, 20002, "我是乙", 2, at=BOT_QQ))
    await bot.mirai.wait_commands(2)
    await bot.mirai.push(group_message(30001, 20001, "群里的甲", 3, at=BOT_QQ))
    await bot.mirai.wait_commands(3)
    assert user_turns(fake_llm.requests[1]) == [("user", "我是乙")]
    # group_scope = member: the same person has a separate history in the group
    assert user_turns(fake_llm.requests[2]) == [("user", "群里的甲")]


async def test_group_scope_group_shares_history(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    app = await start_bot(write_config({"conversation": {"group_scope": "group"}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        await mirai.push(group_message(30001, 20001, "甲说", 1, at=BOT_QQ, name="甲"))
        await mirai.wait_commands(1)
        await mirai.push(group_message(30001, 20002, "乙说", 2, at=BOT_QQ, name="乙"))
        await mirai.wait_commands(2)
        assert user_turns(fake_llm.requests[1]) == [
            ("user", "甲: 甲说"),
            ("assistant", "echo: 甲: 甲说"),
            ("user", "乙: 乙说"),
        ]
    finally:
        await mirai.close()
        await app.stop()


async def test_restart_keeps_history(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    config = write_config()
    for round_number, text in enumerate(["记住数字 7", "数字是几？"]):
        app = await start_bot(config)
        mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
        try:
            await mirai.connect()
            await mirai.push(friend_message(20001, text, round_number + 1))
            await mirai.wait_commands(1)
        finally:
            await mirai.close()
            await app.stop()
    assert user_turns(fake_llm.requests[1]) == [
        ("user", "记住数字 7"),
        ("assistant", "echo: 记住数字 7"),
        ("user", "数字是几？"),
    ]


async def test_reset_and_rollback(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    said = 0

    async def say(text: str) -> str:
        nonlocal said
        said += 1
        await bot.mirai.push(friend_message(20001, text, said))
        return sent_text((await bot.mirai.wait_commands(said))[-1])

    await say("一")
    await say("二")
    assert await say("回滚会话") == "已回滚至上一条对话，你刚刚发的我就忘记啦！"
    await say("三")
    assert user_turns(fake_llm.requests[-1]) == [("user", "一"), ("assistant", "echo: 一"), ("user", "三")]
    assert await say("重置会话") == "会话已重置。"
    await say("四")
    assert user_turns(fake_llm.requests[-1]) == [("user", "四")]
    assert await say("回滚会话") == "已回滚至上一条对话，你刚刚发的我就忘记啦！"
    assert await say("回滚会话") == "回滚失败，没有更早的记录了！如果你想要重新开始，请发送：重置会话"
    assert len(fake_llm.requests) == 4  # commands never reach the model


async def test_llm_failing_once_still_answers(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    fake_llm.fail_next(500)
    await bot.mirai.push(friend_message(20001, "在吗", 1))
    [command] = await bot.mirai.wait_commands(1)
    assert sent_text(command) == "echo: 在吗"
    assert len(fake_llm.requests) == 2


async def test_all_accounts_failing_gives_chinese_error_and_keeps_history(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    second = {"name": "backup", "api_key": "sk-test-2", "api_endpoint": fake_llm.base_url, "model": "m2"}
    first = {"name": "main", "api_key": "sk-test-1", "api_endpoint": fake_llm.base_url, "model": "m1"}
    app = await start_bot(write_config({"openai": {"accounts": [first, second], "max_retries": 0}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        await mirai.push(friend_message(20001, "第一句", 1))
        await mirai.wait_commands(1)
        fake_llm.fail_next(503, times=2)
        await mirai.push(friend_message(20001, "会失败", 2))
        error_reply = sent_text((await mirai.wait_commands(2))[-1])
        assert error_reply.startswith("出现故障！")
        assert "模型服务暂时不可用" in error_reply
        assert "sk-test" not in error_reply and "503" not in error_reply
        assert {r["body"]["model"] for r in fake_llm.requests[1:3]} == {"m1", "m2"}  # both accounts tried
        await mirai.push(friend_message(20001, "第三句", 3))
        await mirai.wait_commands(3)
        assert user_turns(fake_llm.requests[-1]) == [
            ("user", "第一句"),
            ("assistant", "echo: 第一句"),
            ("user", "第三句"),
        ]
    finally:
        await mirai.close()
        await app.stop()


async def test_wrong_verify_key_logs_clearly_and_never_replies(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    app = await start_bot(write_config())
    mirai = FakeMirai(mirai_url(app), "another-key", BOT_QQ)
    try:
        await mirai.connect(wait_verified=False)
        for _ in range(100):
            if any("verifyKey mismatch" in line for line in log_lines):
                break
            await asyncio.sleep(0.02)
        assert any("verifyKey mismatch" in line and "api_key" in line for line in log_lines)
        assert not any(VERIFY_KEY in line for line in log_lines)  # the key itself is never logged
        await mirai.push(friend_message(20001, "你好", 1))
        await asyncio.sleep(0.3)
        assert mirai.commands == [] and fake_llm.requests == []
    finally:
        await mirai.close()
        await app.stop()


async def test_bot_qq_not_logged_in_is_explained(write_config: Callable[..., Path], log_lines: list[str]) -> None:
    app = await start_bot(write_config())
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, 99999)  # mirai has another account logged in
    try:
        await mirai.connect(wait_verified=False)
        for _ in range(100):
            if any("not logged in" in line for line in log_lines):
                break
            await asyncio.sleep(0.02)
        assert any("bot qq not logged in" in line and str(BOT_QQ) in line for line in log_lines)
    finally:
        await mirai.close()
        await app.stop()


async def test_malformed_and_unknown_frames_do_not_stop_the_bot(bot: RunningBot, log_lines: list[str]) -> None:
    garbage = [
        "{not json",
        "[]",
        "42",
        '"text"',
        json.dumps({"syncId": "-1"}),
        json.dumps({"syncId": "-1", "data": None}),
        json.dumps({"syncId": "-1", "data": {"type": 5}}),
        json.dumps({"syncId": "-1", "data": {"type": "FriendMessage"}}),
        json.dumps({"syncId": "-1", "data": {"type": "FriendMessage", "sender": "x", "messageChain": 1}}),
        json.dumps({"syncId": "-1", "data": {"type": "FriendMessage", "sender": {"id": 1}, "messageChain": "x"}}),
        json.dumps(
            {
                "syncId": "-1",
                "data": {"type": "GroupMessage", "sender": {"id": 2, "group": 5}, "messageChain": [1, None, {}]},
            }
        ),
        json.dumps({"syncId": "-1", "data": {"type": "TotallyNewEvent", "x": 1}}),
        json.dumps({"syncId": "-1", "data": {"type": "MemberJoinEvent", "member": {}}}),
        json.dumps({"syncId": "-1", "data": {"type": "NudgeEvent", "subject": None}}),
        json.dumps({"syncId": "-1", "data": {"type": "BotOfflineEventDropped", "qq": BOT_QQ}}),
        json.dumps({"syncId": "999", "data": {"code": 0}}),
        json.dumps({"code": 400, "msg": "bad"}),
        json.dumps({"syncId": "-1", "data": {"type": "FriendSyncMessage", "subject": {"id": 1}, "messageChain": []}}),
        json.dumps({"syncId": "-1", "data": {"type": "FriendMessage", "sender": {"id": BOT_QQ}, "messageChain": []}}),
        "x" * 100_000,
    ]
    assert len(garbage) == 20
    for frame in garbage:
        await bot.mirai.send_raw(frame)
    await bot.mirai.push(friend_message(20001, "还在吗", 9))
    commands = await bot.mirai.wait_commands(1)
    await asyncio.sleep(0.2)
    assert [sent_text(c) for c in bot.mirai.commands] == ["echo: 还在吗"]
    assert len(commands) == 1
    assert any("malformed" in line for line in log_lines)


async def test_peer_reconnect_is_served_again(bot: RunningBot) -> None:
    await bot.mirai.push(friend_message(20001, "一", 1))
    await bot.mirai.wait_commands(1)
    await bot.mirai.close()
    again = FakeMirai(mirai_url(bot.app), VERIFY_KEY, BOT_QQ)
    try:
        await again.connect()
        await again.push(friend_message(20001, "二", 2))
        [command] = await again.wait_commands(1)
        assert sent_text(command) == "echo: 二"
    finally:
        await again.close()


async def test_new_connection_replaces_a_dead_one(bot: RunningBot) -> None:
    # mirai-api-http restarted without closing the old socket cleanly: the newest verified one wins
    newer = FakeMirai(mirai_url(bot.app), VERIFY_KEY, BOT_QQ)
    try:
        await newer.connect()
        await newer.push(friend_message(20001, "新连接", 1))
        [command] = await newer.wait_commands(1)
        assert sent_text(command) == "echo: 新连接"
        assert bot.mirai.commands == []
    finally:
        await newer.close()


async def test_reply_made_while_link_is_down_is_sent_after_reconnect(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.5
    await bot.mirai.push(friend_message(20001, "慢慢想", 1))
    await asyncio.sleep(0.1)
    await bot.mirai.close()
    await asyncio.sleep(0.8)  # the reply is produced while nobody is connected
    again = FakeMirai(mirai_url(bot.app), VERIFY_KEY, BOT_QQ)
    try:
        await again.connect()
        [command] = await again.wait_commands(1)
        assert sent_text(command) == "echo: 慢慢想"
    finally:
        await again.close()


async def test_redelivered_message_is_answered_once(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    await bot.mirai.push(friend_message(20001, "一次", 1))
    await bot.mirai.push(friend_message(20001, "一次", 1))
    await bot.mirai.push(friend_message(20001, "marker", 2))
    await bot.mirai.wait_commands(2)
    await asyncio.sleep(0.2)
    assert [sent_text(c) for c in bot.mirai.commands] == ["echo: 一次", "echo: marker"]


async def test_temp_chat_ignored_unless_reply_temp(bot: RunningBot) -> None:
    temp = group_message(30001, 20001, "临时会话", 1)
    temp["type"] = "TempMessage"
    await bot.mirai.push(temp)
    await bot.mirai.push(friend_message(20001, "marker", 2))
    await bot.mirai.wait_commands(1)
    await asyncio.sleep(0.2)
    assert [c["command"] for c in bot.mirai.commands] == ["sendFriendMessage"]


async def test_thirty_users_three_messages_each_concurrently(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.02
    users = [20000 + i for i in range(30)]

    async def user_sends(user: int) -> None:
        for n in range(3):
            await bot.mirai.push(friend_message(user, f"{user}-{n}", user * 10 + n))

    await asyncio.gather(*(user_sends(u) for u in users))
    commands = await bot.mirai.wait_commands(90, timeout=20)
    await asyncio.sleep(0.2)
    assert len(bot.mirai.commands) == 90
    by_user: dict[int, list[str]] = {}
    for command in commands:
        by_user.setdefault(command["content"]["target"], []).append(sent_text(command))
    assert by_user == {u: [f"echo: {u}-{n}" for n in range(3)] for u in users}
    # each user's third request carried that user's own first two exchanges only
    for request in fake_llm.requests:
        turns = user_turns(request)
        owner = turns[-1][1].split("-")[0]
        assert all(content.split("-")[0].removeprefix("echo: ") == owner for _, content in turns)


async def test_slow_model_for_one_user_never_blocks_another(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    fake_llm.hang_next(1)
    await bot.mirai.push(friend_message(20001, "卡住的问题", 1))
    await asyncio.sleep(0.2)
    await bot.mirai.push(friend_message(20002, "别人的问题", 2))
    [command] = await bot.mirai.wait_commands(1, timeout=3)
    assert command["content"]["target"] == 20002 and sent_text(command) == "echo: 别人的问题"


async def test_still_thinking_notice_then_the_answer(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    app = await start_bot(write_config({"response": {"timeout": 0.3, "max_timeout": 5}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        fake_llm.latency = 0.8
        await mirai.push(group_message(30001, 20001, "难题", 1, at=BOT_QQ))
        notice, answer = await mirai.wait_commands(2)
        assert sent_text(notice) == "我还在思考中，请再等一下~" and notice["content"]["quote"] == 1
        assert sent_text(answer) == "echo: 难题"
    finally:
        await mirai.close()
        await app.stop()


async def test_max_timeout_gives_up_and_keeps_history(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    config = write_config({"response": {"timeout": 0.2, "max_timeout": 0.5}, "openai": {"gpt_params": {"timeout": 30}}})
    app = await start_bot(config)
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        fake_llm.hang_next(1)
        await mirai.push(friend_message(20001, "永远等不到", 1))
        notice, gave_up = await mirai.wait_commands(2)
        assert sent_text(notice) == "我还在思考中，请再等一下~"
        assert sent_text(gave_up).startswith("啊哦，这个问题有点难")
        await mirai.push(friend_message(20001, "下一个", 2))
        await mirai.wait_commands(3)
        assert user_turns(fake_llm.requests[-1]) == [("user", "下一个")]
    finally:
        await mirai.close()
        await app.stop()


async def test_long_reply_is_split_into_parts(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    paragraphs = [f"第{i}段" + "字" * 995 for i in range(6)]
    fake_llm.reply_fn = lambda body: "\n\n".join(paragraphs)
    app = await start_bot(write_config({"response": {"forward_threshold": 0}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        await mirai.push(group_message(30001, 20001, "写长文", 1, at=BOT_QQ))
        await asyncio.sleep(0.5)
        parts = [sent_text(c) for c in await mirai.wait_commands(2)]
        assert all(len(p) <= 4500 for p in parts)
        assert "\n\n".join(parts) == "\n\n".join(paragraphs)
        assert "quote" in mirai.commands[0]["content"] and "quote" not in mirai.commands[1]["content"]
    finally:
        await mirai.close()
        await app.stop()


async def test_very_long_reply_becomes_a_forward_message(bot: RunningBot, fake_llm: FakeOpenAI) -> None:
    paragraphs = [f"第{i}段" + "字" * 995 for i in range(6)]
    fake_llm.reply_fn = lambda body: "\n\n".join(paragraphs)
    await bot.mirai.push(group_message(30001, 20001, "写长文", 1, at=BOT_QQ))
    [command] = await bot.mirai.wait_commands(1)
    [forward] = command["content"]["messageChain"]
    assert forward["type"] == "Forward" and command["content"]["quote"] == 1
    texts = ["".join(e["text"] for e in node["messageChain"]) for node in forward["nodeList"]]
    assert "\n\n".join(texts) == "\n\n".join(paragraphs)
    assert all(node["senderId"] == BOT_QQ and node["senderName"] == "小助手" for node in forward["nodeList"])


async def test_friend_request_and_invitation_answered_separately(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    request = {
        "type": "NewFriendRequestEvent",
        "eventId": 7,
        "fromId": 20009,
        "groupId": 0,
        "nick": "n",
        "message": "hi",
    }
    invite = {"type": "BotInvitedJoinGroupRequestEvent", "eventId": 8, "fromId": 20009, "groupId": 30009}
    app = await start_bot(write_config({"system": {"accept_friend_request": True, "accept_group_invite": False}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        await mirai.push(invite)
        await mirai.push(request)
        commands = await mirai.wait_commands(2)
        answers = {c["command"]: c["content"] for c in commands}
        assert answers["resp_newFriendRequestEvent"] == {
            "eventId": 7,
            "fromId": 20009,
            "groupId": 0,
            "operate": 0,
            "message": "",
        }
        assert answers["resp_botInvitedJoinGroupRequestEvent"]["operate"] == 1  # refused
    finally:
        await mirai.close()
        await app.stop()


async def test_quote_can_be_turned_off(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    app = await start_bot(write_config({"response": {"quote": False}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        await mirai.push(group_message(30001, 20001, "不要引用", 5, at=BOT_QQ))
        [command] = await mirai.wait_commands(1)
        assert "quote" not in command["content"] and sent_text(command) == "echo: 不要引用"
    finally:
        await mirai.close()
        await app.stop()


async def test_broken_database_gets_a_short_error_not_silence(bot: RunningBot, tmp_path: Path) -> None:
    await bot.mirai.push(friend_message(20001, "正常", 1))
    await bot.mirai.wait_commands(1)
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as db:
        db.execute("DROP TABLE messages")
    await bot.mirai.push(friend_message(20001, "数据库坏了", 2))
    reply = sent_text((await bot.mirai.wait_commands(2))[-1])
    assert reply.startswith("出现故障！") and "聊天记录数据库暂时无法读写" in reply
    assert "messages" not in reply  # no SQL detail in chat


async def test_swallowed_text_becomes_a_picture_sent_once_then_gives_up_in_the_log(
    bot: RunningBot, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    # The adapter resends as a forward message; the replier (not the adapter) renders the picture.
    bot.mirai.swallow_next = 4
    await bot.mirai.push(friend_message(20001, "全被吞", 1))
    commands = await bot.mirai.wait_commands(4)
    kinds = [c["content"]["messageChain"][0]["type"] for c in commands]
    assert kinds == ["Plain", "Forward", "Image", "Forward"]  # the picture, swallowed, got its forward resend
    assert any("as a picture" in line for line in log_lines)
    await eventually(lambda: any("swallowed in every form" in line for line in log_lines))
    bot.mirai.swallow_next = 0
    await bot.mirai.push(friend_message(20001, "正常", 2))
    later = await bot.mirai.wait_commands(5)
    assert sent_text(later[4]) == "echo: 正常"  # nothing more of the first reply was sent in between
