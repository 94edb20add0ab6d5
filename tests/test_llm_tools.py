"""Tool calling in the OpenAI-compatible backend (stream and non-stream) against the fake OpenAI server
on 127.0.0.1: calls asked for, tool turns sent back, accounts without function calling, failover."""
# ruff: noqa: F811 - the fixtures are imported from test_llm and named as parameters

from __future__ import annotations

import json
from typing import Any

import pytest

from llm.base import ChatTurn, ToolCall
from llm.openai_compat import MAX_TOOL_CALLS, _ToolCallParts
from tests.fakes.openai_server import FakeCall, FakeOpenAI, FakeToolCalls, last_tool_results, replies_in_order
from tests.test_llm import HELLO, Factory, backend, fake  # noqa: F401

TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_time", "description": "现在的时间", "parameters": {"type": "object", "properties": {}}},
}
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "搜索网页",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
TOOLS = [TIME_TOOL, SEARCH_TOOL]
BOTH_CALLS = FakeToolCalls(
    [
        FakeCall("get_time", {"zone": "Asia/Shanghai"}, id="call_a"),
        FakeCall("web_search", {"query": "今天的新闻 today's news"}, id="call_b"),
    ]
)
# an assistant turn that asked for two tools, and their results, as the conversation layer stores them
ASKED = ChatTurn(
    "assistant",
    "",
    tool_calls=(
        ToolCall("call_a", "get_time", '{"zone":"Asia/Shanghai"}'),
        ToolCall("call_b", "web_search", '{"query":"新闻"}'),
    ),
)
RESULTS = [
    ChatTurn("tool", "2026-12-03 20:48", tool_call_id="call_a", name="get_time"),
    ChatTurn("tool", "1. 标题 https://example.com", tool_call_id="call_b", name="web_search"),
]
HISTORY = [ChatTurn("user", "现在几点，有什么新闻？"), ASKED, *RESULTS]
modes = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


def messages(fake: FakeOpenAI, request: int = -1) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = fake.requests[request]["body"]["messages"]
    return result


@modes
async def test_two_tools_at_once_come_back_in_order_exactly(fake: FakeOpenAI, backend: Factory, stream: bool) -> None:
    fake.reply_fn = replies_in_order(BOTH_CALLS)
    reply = await backend(stream=stream).complete(HELLO, tools=TOOLS)
    assert reply.text == ""
    assert reply.tool_calls == (
        ToolCall("call_a", "get_time", '{"zone": "Asia/Shanghai"}'),
        ToolCall("call_b", "web_search", '{"query": "今天的新闻 today\'s news"}'),
    )
    assert fake.requests[0]["body"]["tools"] == TOOLS


@modes
async def test_second_request_carries_the_calls_and_their_results(
    fake: FakeOpenAI, backend: Factory, stream: bool
) -> None:
    fake.reply_fn = replies_in_order(BOTH_CALLS, "现在是晚上八点，新闻如下。")
    model = backend(stream=stream)
    first = await model.complete(HELLO, tools=TOOLS)
    asked = ChatTurn("assistant", first.text, tool_calls=first.tool_calls)
    results = [ChatTurn("tool", f"result {c.name}", tool_call_id=c.id, name=c.name) for c in first.tool_calls]
    second = await model.complete([*HELLO, asked, *results], tools=TOOLS)
    assert (second.text, second.tool_calls) == ("现在是晚上八点，新闻如下。", ())
    sent = messages(fake)
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_time", "arguments": first.tool_calls[0].arguments},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "web_search", "arguments": first.tool_calls[1].arguments},
            },
        ],
    }
    assert last_tool_results(fake.requests[-1]["body"]) == [
        {"role": "tool", "tool_call_id": "call_a", "content": "result get_time"},
        {"role": "tool", "tool_call_id": "call_b", "content": "result web_search"},
    ]
    assert json.loads(sent[1]["tool_calls"][1]["function"]["arguments"]) == {"query": "今天的新闻 today's news"}


@modes
async def test_text_with_a_tool_call_reaches_on_delta(fake: FakeOpenAI, backend: Factory, stream: bool) -> None:
    fake.reply_fn = replies_in_order(FakeToolCalls([FakeCall("get_time")], text="我查一下时间。"))
    seen: list[str] = []

    async def on_delta(piece: str) -> None:
        seen.append(piece)

    reply = await backend(stream=stream).complete(HELLO, tools=TOOLS, on_delta=on_delta)
    assert reply.text == "我查一下时间。" == "".join(seen)
    [call] = reply.tool_calls
    assert (call.name, call.arguments) == ("get_time", "{}")
    assert call.id.startswith("call_fake")


@modes
async def test_a_call_without_id_gets_a_unique_one(fake: FakeOpenAI, backend: Factory, stream: bool) -> None:
    calls = [FakeCall("get_time", id=None), FakeCall("web_search", {"query": "x"}, id=None)]
    fake.reply_fn = replies_in_order(FakeToolCalls(calls))
    reply = await backend(stream=stream).complete(HELLO, tools=TOOLS)
    ids = [call.id for call in reply.tool_calls]
    assert [call.name for call in reply.tool_calls] == ["get_time", "web_search"]
    # made by the backend: the fake's own ids would start with "call_fake"
    assert all(ident.startswith("call_") and not ident.startswith("call_fake") for ident in ids)
    assert len(set(ids)) == 2


async def test_arguments_split_over_many_chunks_are_joined(fake: FakeOpenAI, backend: Factory) -> None:
    arguments = {"query": '一个很长的搜索词 with "quotes" and \\ backslashes ' * 5}
    fake.reply_fn = replies_in_order(FakeToolCalls([FakeCall("web_search", arguments, id="c1")], arguments_chunk=1))
    [call] = (await backend(stream=True).complete(HELLO, tools=TOOLS)).tool_calls
    assert json.loads(call.arguments) == arguments


@pytest.mark.parametrize("shape", ["whole", "no_index"])
async def test_whole_calls_in_one_chunk_and_calls_without_index(fake: FakeOpenAI, backend: Factory, shape: str) -> None:
    calls = [FakeCall("get_time", {"a": 1}, id=None), FakeCall("web_search", {"query": "q"}, id=None)]
    fake.reply_fn = replies_in_order(FakeToolCalls(calls, whole=shape == "whole", indexed=shape == "whole"))
    reply = await backend(stream=True).complete(HELLO, tools=TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("get_time", {"a": 1}),
        ("web_search", {"query": "q"}),
    ]


async def test_invalid_json_arguments_are_kept_as_sent(fake: FakeOpenAI, backend: Factory) -> None:
    fake.reply_fn = replies_in_order(FakeToolCalls([FakeCall("web_search", '{"query": "unterminated', id="c1")]))
    [call] = (await backend(stream=True).complete(HELLO, tools=TOOLS)).tool_calls
    assert call.arguments == '{"query": "unterminated'


@modes
async def test_account_without_function_calling_gets_no_tools_and_plain_history(
    fake: FakeOpenAI, backend: Factory, stream: bool
) -> None:
    model = backend(stream=stream, accounts=[{"name": "local", "api_key": "k1", "model": "m1", "tools": False}])
    spoken = ChatTurn("assistant", "我查一下。", tool_calls=ASKED.tool_calls)
    reply = await model.complete([*HISTORY, spoken, RESULTS[0], ChatTurn("user", "谢谢")], tools=TOOLS)
    assert reply.text == "echo: 谢谢" and reply.tool_calls == ()
    body = fake.requests[0]["body"]
    assert "tools" not in body
    assert body["messages"] == [
        {"role": "user", "content": "现在几点，有什么新闻？"},
        {"role": "system", "content": "工具 get_time 的结果：2026-12-03 20:48"},
        {"role": "system", "content": "工具 web_search 的结果：1. 标题 https://example.com"},
        {"role": "assistant", "content": "我查一下。"},
        {"role": "system", "content": "工具 get_time 的结果：2026-12-03 20:48"},
        {"role": "user", "content": "谢谢"},
    ]


@modes
async def test_no_tools_key_when_none_are_given(fake: FakeOpenAI, backend: Factory, stream: bool) -> None:
    reply = await backend(stream=stream).complete([*HISTORY, ChatTurn("user", "谢谢")])
    assert reply.text == "echo: 谢谢"
    body = fake.requests[0]["body"]
    assert "tools" not in body and "tool_choice" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool", "user"]


@modes
async def test_failover_to_the_next_account_keeps_the_tools(fake: FakeOpenAI, backend: Factory, stream: bool) -> None:
    fake.fail_key("k1", 401)
    fake.reply_fn = replies_in_order(BOTH_CALLS)
    reply = await backend(("k1", "k2"), stream=stream).complete(HELLO, tools=TOOLS)
    assert reply.account == "acc2"
    assert [call.id for call in reply.tool_calls] == ["call_a", "call_b"]
    assert fake.authorizations() == ["k1", "k2"]
    assert fake.requests[1]["body"]["tools"] == TOOLS


async def test_failover_after_a_server_error_with_tools(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(503, times=3)
    fake.reply_fn = replies_in_order(BOTH_CALLS)
    reply = await backend(("k1", "k2"), stream=True, max_retries=2).complete(HELLO, tools=TOOLS)
    assert reply.account == "acc2" and len(reply.tool_calls) == 2


@modes
async def test_a_tool_call_without_a_name_and_no_text_is_an_empty_reply(
    fake: FakeOpenAI, backend: Factory, stream: bool
) -> None:
    fake.reply_fn = replies_in_order(FakeToolCalls([FakeCall("", {"a": 1}, id="c1")]), "好的")
    reply = await backend(("k1", "k2"), stream=stream).complete(HELLO, tools=TOOLS)
    # the nameless call is never handed out: an empty answer, failed over like any other
    assert (reply.text, reply.tool_calls, reply.account) == ("好的", (), "acc2")


def test_fragments_from_a_misbehaving_server_never_raise() -> None:
    parts = _ToolCallParts()
    hostile: list[object] = [None, 5, "x", [1, None], [{"index": "0"}], [{"index": True, "function": None}]]
    hostile += [[{"index": 0, "function": {"name": 7, "arguments": 3.5}}], [{"function": {"arguments": {"a": 1}}}]]
    hostile += [[{"index": 0, "id": "c0", "function": {"name": "get_time"}}]]
    hostile += [[{"index": i, "function": {"name": f"t{i}"}}] for i in range(1, 100)]
    for fragments in hostile:
        parts.add_fragments(fragments)
    calls = parts.calls()
    assert len(calls) <= MAX_TOOL_CALLS
    assert calls[0] == ToolCall("c0", "get_time", '{"a": 1}')  # an object as arguments (Ollama) becomes JSON text


def test_message_calls_with_object_arguments_and_junk_entries() -> None:
    parts = _ToolCallParts()
    parts.add_message_calls([{"id": "c1", "function": {"name": "web_search", "arguments": {"query": "新闻"}}}, "junk"])
    assert parts.calls() == (ToolCall("c1", "web_search", '{"query": "新闻"}'),)
