"""OneBot 11 end to end in all four modes: fake LLBot/NapCat ⇄ bot ⇄ fake OpenAI server, on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.link import LinkState
from bot import App
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.onebot_impl import FakeOneBot, sent_text
from tests.fakes.openai_server import FakeOpenAI

BOT = 10002
TOKEN = "onebot-token"
SECRET = "post-secret"
MODES = ["reverse", "forward", "http-post", "http-sse"]


class Setup:
    """A started bot and the fake implementation, connected in one mode."""

    def __init__(self, app: App, impl: FakeOneBot, mode: str, reconnect: Callable[[], Any]) -> None:
        self.app = app
        self.impl = impl
        self.mode = mode
        self.reconnect = reconnect
        self.ids = 100

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def sends(self) -> list[dict[str, Any]]:
        """What the bot sent or answered (lookups like get_msg left out)."""
        return [a for a in self.impl.actions if a["action"].startswith(("send_", "set_"))]

    async def say(self, event: dict[str, Any], replies: int = 1) -> list[dict[str, Any]]:
        seen = len(self.sends())
        await self.impl.push(event)
        await eventually(lambda: len(self.sends()) >= seen + replies, timeout=10)
        return self.sends()[seen:]

    @property
    def adapter(self) -> Any:
        return self.app.adapters["onebot"]


async def connect(mode: str, impl: FakeOneBot, write_config: Callable[..., Path], extra: dict[str, Any]) -> Setup:
    onebot: dict[str, Any] = {"access_token": TOKEN, "manager_qq": 20099}
    if mode == "reverse":
        port = free_port()
        onebot |= {"reverse_ws_host": "127.0.0.1", "reverse_ws_port": port}
    elif mode == "forward":
        onebot |= {"ws_url": await impl.serve_forward()}
    else:
        onebot |= {"http_url": await impl.serve_http()}
        if mode == "http-post":
            port = free_port()
            onebot |= {"http_post_host": "127.0.0.1", "http_post_port": port, "secret": SECRET}
            impl.post_url, impl.post_secret = f"http://127.0.0.1:{port}/", SECRET
    app = await start_bot(write_config({"mirai": None, "onebot": onebot, **extra}))

    async def reconnect() -> None:
        if mode == "reverse":
            await impl.connect_reverse(f"ws://127.0.0.1:{onebot['reverse_ws_port']}/onebot/v11/ws", token=TOKEN)

    await reconnect()
    await eventually(lambda: app.adapters["onebot"].connected, timeout=10)
    return Setup(app, impl, mode, reconnect)


@pytest.fixture
async def onebot(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Setup] = []

    async def start(mode: str, extra: dict[str, Any] | None = None) -> Setup:
        impl = FakeOneBot(BOT, access_token=TOKEN)
        setup = await connect(mode, impl, write_config, extra or {})
        started.append(setup)
        return setup

    yield start
    for setup in started:
        await setup.app.stop()
        await setup.impl.close()


@pytest.mark.parametrize("mode", MODES)
async def test_round_trips_quote_and_both_formats(onebot: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    ob = await onebot(mode)
    impl = ob.impl
    [private] = await ob.say(impl.private_message(20001, [{"type": "text", "data": {"text": "你好"}}], ob.next_id()))
    assert private["action"] == "send_private_msg" and private["params"]["user_id"] == 20001
    assert sent_text(private) == "echo: 你好"
    group_id = ob.next_id()
    [group] = await ob.say(impl.group_message(30001, 20002, f"[CQ:at,qq={BOT}] 群里好&#91;1&#93;", group_id))
    assert group["action"] == "send_group_msg" and group["params"]["group_id"] == 30001
    first = group["params"]["message"][0]
    assert first == {"type": "reply", "data": {"id": str(group_id)}}
    assert sent_text(group) == "echo: 群里好[1]"
    # replying to the bot's own message counts as a mention, and the quoted text is context
    bot_message_id = group["params"].get("message_id") or next(iter(impl.messages))
    quote = [{"type": "reply", "data": {"id": str(bot_message_id)}}, {"type": "text", "data": {"text": "继续"}}]
    [followed] = await ob.say(impl.group_message(30001, 20002, quote, ob.next_id()))
    assert sent_text(followed).startswith("echo: [引用: ") and sent_text(followed).endswith("继续")


@pytest.mark.parametrize("mode", MODES)
async def test_own_messages_and_malformed_frames_are_ignored(onebot: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    ob = await onebot(mode)
    impl = ob.impl
    await impl.push(impl.message_sent_event("我自己说的", ob.next_id(), target_id=20001))
    await impl.push({**impl.private_message(BOT, "也是我自己", ob.next_id())})
    garbage: list[Any] = [{"post_type": 5}, {"post_type": "message"}, {"post_type": "message", "message_type": "x"}]
    garbage += [{"post_type": "message", "message_type": "private", "user_id": 1, "message": 7}]
    garbage += [{"post_type": "notice"}, {"post_type": "request", "request_type": "weird"}, {"echo": "nobody"}]
    garbage += [{"post_type": "meta_event", "meta_event_type": "heartbeat", "interval": "x"}]
    garbage += [{"status": "failed", "retcode": 1400}] * 12
    assert len(garbage) == 20
    for frame in garbage:
        await impl.push(frame)
    [reply] = await ob.say(impl.private_message(20001, "还在吗", ob.next_id()))
    assert sent_text(reply) == "echo: 还在吗"
    # nothing but the last message reached the model (own messages ignored, garbage dropped)
    assert [m["body"]["messages"][-1]["content"] for m in fake_llm.requests] == ["还在吗"]


@pytest.mark.parametrize("mode", MODES)
async def test_requests_pokes_and_forward_for_long_answers(onebot: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    extra = {"system": {"accept_friend_request": True}, "response": {"poke_reply": "别戳啦"}}
    ob = await onebot(mode, extra)
    impl = ob.impl
    await impl.push(impl.friend_request(20005, flag="f-1"))
    await impl.push(impl.group_request(30005, 20005, flag="g-1"))
    actions = await impl.wait_actions(2, timeout=10)
    answers = {a["action"]: a["params"] for a in actions}
    assert answers["set_friend_add_request"] == {"flag": "f-1", "approve": True}
    assert answers["set_group_add_request"] == {"flag": "g-1", "sub_type": "invite", "approve": False}
    [poke] = await ob.say(impl.poke(20001, BOT, group_id=30001))
    assert poke["action"] == "send_group_msg" and sent_text(poke) == "别戳啦"
    fake_llm.reply_fn = lambda body: "\n\n".join("很长的一段话。" * 40 for _ in range(8))
    [forward] = await ob.say(impl.group_message(30001, 20001, f"[CQ:at,qq={BOT}] 写长文", ob.next_id()))
    assert forward["action"] == "send_group_forward_msg"
    nodes = forward["params"]["messages"]
    assert nodes and all(n["type"] == "node" and n["data"]["user_id"] == str(BOT) for n in nodes)


@pytest.mark.parametrize("mode", MODES)
async def test_implementation_dropping_and_coming_back(onebot: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    ob = await onebot(mode)
    impl = ob.impl
    fake_llm.latency = 0.8
    await impl.push(impl.private_message(20001, "慢问题", ob.next_id()))
    await asyncio.sleep(0.2)
    if mode == "reverse":
        await impl.drop()
    elif mode == "forward":
        await impl.stop_forward()
    elif mode == "http-sse":
        await impl.drop_sse()
        await impl.stop_http()
    else:
        await impl.stop_http()
    await asyncio.sleep(1.0)  # the answer is ready while the implementation is gone
    if mode == "forward":
        await impl.serve_forward()
    elif mode in ("http-post", "http-sse"):
        await impl.serve_http()
    else:
        await ob.reconnect()
    [reply] = await impl.wait_actions(1, timeout=30)
    assert sent_text(reply) == "echo: 慢问题"


async def test_wrong_token_is_refused_in_reverse_mode(onebot: Any) -> None:
    ob = await onebot("reverse")
    port = ob.adapter.port
    other = FakeOneBot(BOT, access_token="wrong")
    with pytest.raises(Exception, match="403"):
        await other.connect_reverse(f"ws://127.0.0.1:{port}/", token="wrong")
    with pytest.raises(Exception, match="401"):
        await other.connect_reverse(f"ws://127.0.0.1:{port}/", token="")
    await other.close()


async def test_legacy_token_scheme_and_query_token_accepted(onebot: Any) -> None:
    ob = await onebot("reverse")
    port = ob.adapter.port
    legacy = FakeOneBot(BOT)
    await legacy.connect_reverse(f"ws://127.0.0.1:{port}/", token="", headers={"Authorization": f"Token {TOKEN}"})
    query = FakeOneBot(BOT)
    await query.connect_reverse(f"ws://127.0.0.1:{port}/?access_token={TOKEN}", token="")
    await legacy.close()
    await query.close()


async def test_wrong_signature_is_refused_in_http_post_mode(onebot: Any, fake_llm: FakeOpenAI) -> None:
    ob = await onebot("http-post")
    impl = ob.impl
    event = impl.private_message(20001, "伪造的", ob.next_id())
    assert await impl.post_event(impl.post_url, event, signature="sha1=0000") == 403
    assert await impl.post_event(impl.post_url, event, secret=SECRET) == 204
    await impl.wait_actions(1)
    assert len(fake_llm.requests) == 1


async def test_separate_api_and_event_sockets_and_temp_chats(onebot: Any, fake_llm: FakeOpenAI) -> None:
    ob = await onebot("reverse", {"system": {"reply_temp": True}})
    url = f"ws://127.0.0.1:{ob.adapter.port}/"
    split = FakeOneBot(BOT, access_token=TOKEN)
    await split.connect_reverse(url, role="API")
    await split.connect_reverse(url, role="Event")
    temp = split.private_message(20001, "临时会话", 555, sub_type="group")
    temp["group_id"] = 30001
    await split.push(temp)
    [reply] = await split.wait_actions(1, timeout=10)
    assert reply["action"] == "send_private_msg" and reply["params"]["group_id"] == 30001
    await split.close()


async def test_forward_link_without_heartbeats_is_treated_as_dead(
    write_config: Callable[..., Path], log_lines: list[str]
) -> None:
    impl = FakeOneBot(BOT, access_token=TOKEN)
    impl.heartbeat_interval = 0.2
    url = await impl.serve_forward()
    app = await start_bot(write_config({"mirai": None, "onebot": {"access_token": TOKEN, "ws_url": url}}))
    try:
        await eventually(lambda: app.adapters["onebot"].connected, timeout=10)
        await asyncio.sleep(0.5)  # heartbeats arrive; the link stays up
        assert impl.connections == 1
        impl.mute_heartbeats = True  # the implementation hangs with its socket open
        await eventually(lambda: impl.connections >= 2, timeout=10)
        assert any("no heartbeat" in line for line in log_lines)
    finally:
        await app.stop()
        await impl.close()


@pytest.mark.parametrize("mode", ["forward", "http-sse", "http-post"])
async def test_wrong_token_stops_the_link_with_one_line(
    write_config: Callable[..., Path], log_lines: list[str], mode: str
) -> None:
    # A refused access_token cannot fix itself: the dialled link stops with one line naming the key.
    impl = FakeOneBot(BOT, access_token=TOKEN)
    onebot: dict[str, Any] = {"access_token": "not-the-token-5f3a"}
    if mode == "forward":
        onebot["ws_url"] = await impl.serve_forward()
    else:
        onebot["http_url"] = await impl.serve_http()
        if mode == "http-post":
            onebot |= {"http_post_host": "127.0.0.1", "http_post_port": free_port()}
    app = await start_bot(write_config({"mirai": None, "onebot": onebot}))
    try:
        adapter = app.adapters["onebot"]
        link = adapter.link  # type: ignore[attr-defined]
        await eventually(lambda: link.status.state is LinkState.STOPPED, timeout=10)
        assert "HTTP 403" in link.fatal and "[onebot] access_token" in link.fatal
        stopped = [line for line in log_lines if "stopped:" in line and "access_token" in line]
        assert len(stopped) == 1 and impl.refused == 1
        assert not adapter.connected and not any("5f3a" in line for line in log_lines)
        # the only platform stopped for good (in http-post mode its webhook too: nothing could be answered)
        await asyncio.wait_for(app.all_stopped.wait(), 5)
        assert "[onebot] access_token" in app.stopped_reason
    finally:
        await app.stop()
        await impl.close()


async def test_forwarded_chat_log_is_fetched_in_either_shape(onebot: Any, fake_llm: FakeOpenAI) -> None:
    ob = await onebot("reverse")
    impl = ob.impl
    node = {
        "type": "node",
        "data": {"user_id": "20008", "nickname": "小明", "content": [{"type": "text", "data": {"text": "明天开会"}}]},
    }
    impl.forwards["fw-spec"] = {"message": [node]}
    impl.forwards["fw-llbot"] = {
        "messages": [
            {
                "sender": {"user_id": 20009, "nickname": "小红"},
                "time": 1,
                "message_id": 9,
                "content": [{"type": "text", "data": {"text": "收到"}}],
            }
        ]
    }
    for forward_id, expected in (("fw-spec", "小明: 明天开会"), ("fw-llbot", "小红: 收到")):
        message = [{"type": "forward", "data": {"id": forward_id}}, {"type": "text", "data": {"text": "总结一下"}}]
        await ob.say(impl.private_message(20001, message, ob.next_id()))
        prompt = fake_llm.requests[-1]["body"]["messages"][-1]["content"]
        assert expected in prompt and prompt.endswith("总结一下")


async def test_failed_action_gives_one_clear_log_line(onebot: Any, log_lines: list[str]) -> None:
    ob = await onebot("forward")
    ob.impl.fail_next_action = 1
    await ob.impl.push(ob.impl.private_message(20001, "发不出去", ob.next_id()))
    await eventually(lambda: any("send_private_msg failed with code 1200: 发送失败" in line for line in log_lines))
