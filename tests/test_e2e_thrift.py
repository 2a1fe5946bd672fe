"""End to end over Thrift: chatsvc's own client against a real chatsvc process, every transport."""

from __future__ import annotations

import asyncio

import pytest

from chatsvc.client import ChatClient
from chatsvc.wire.framing import Transport


@pytest.mark.parametrize("transport", list(Transport))
async def test_send_pull_over_every_transport(chatsvc_addr, transport):
    async with ChatClient(*chatsvc_addr, transport=transport) as client:
        for i in range(5):
            reply = await client.send("bob:alice", f"m{i}", "alice" if i % 2 else "bob")
            assert (reply.Code, reply.Msg) == (0, "success")
        page = await client.pull("alice:bob", 0, 3)
        assert page.Code == 0 and [m.Text for m in page.Messages] == ["m0", "m1", "m2"]
        assert page.HasMore is True and page.NextCursor > page.Messages[-1].SendTime
        rest = await client.pull("alice:bob", page.NextCursor, 3)
        assert [m.Text for m in rest.Messages] == ["m3", "m4"] and rest.HasMore is False
        assert rest.NextCursor == 0 and {m.Chat for m in rest.Messages} == {"alice:bob"}
        newest = await client.pull("alice:bob", 0, 2, reverse=True)
        assert [m.Text for m in newest.Messages] == ["m4", "m3"]
        bad = await client.send("alice:bob", "x", "carol")
        assert bad.Code == 400 and "sender" in bad.Msg


async def test_many_calls_in_flight_share_few_connections(chatsvc_addr):
    async with ChatClient(*chatsvc_addr, pool_size=2, pipeline=64) as client:
        replies = await asyncio.gather(*[client.send("p:q", f"{i}", "p") for i in range(500)])
        assert all(r.Code == 0 for r in replies)
        assert len(client._conns) <= 2
        page = await client.pull("p:q", 0, 100)
        assert page.HasMore is True and len(page.Messages) == 100


async def test_pull_with_missing_fields_counts_them_as_zero(chatsvc_addr):
    from chatsvc.wire.idl import IMService, PullRequest

    async with ChatClient(*chatsvc_addr) as client:
        await client.send("a:b", "hi", "a")
        reply = await client.call("Pull", IMService.Pull_args(req=PullRequest(Chat="a:b")))
        assert reply.Code == 0 and [m.Text for m in reply.Messages] == ["hi"]
        reply = await client.call("Pull", IMService.Pull_args(req=None))
        assert reply.Code == 400 and reply.Messages == [] and reply.HasMore is False
