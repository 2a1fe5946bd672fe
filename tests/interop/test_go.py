"""Go with Apache Thrift (Debian golang-go + golang-thrift-dev), in both directions.

* ``go/client``: a Go client runs the scenario against chatsvc over framed and buffered transports
  and prints JSON, checked here. Go's generated code enforces required fields on decode, so a
  reply missing ``Code``/``Msg`` would fail it.
* ``go/server``: an in-memory Go IMService server (framed, and buffered); chatsvc's own client
  (``chatsvc.client.ChatClient``) runs the same scenario against it. Go's generated server code
  enforces the request's required fields, so the client must always send them.

The Go programs are built once per session (``go_bins`` fixture in conftest).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import start_go_server
from tests.interop.scenario import check_scenario, page_of
from tests.procs import Proc, running

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("transport", ["buffered", "framed"])
def test_go_apache_thrift_client(go_bins: dict[str, Path], chatsvc_addr: tuple[str, int], chat: str,
                                 transport: str) -> None:
    host, port = chatsvc_addr
    proc = subprocess.run([str(go_bins["client"]), host, str(port), transport, chat],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"Go client exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout)
    assert (result["client"], result["transport"]) == ("go", transport)
    check_scenario(result, chat)


async def chatclient_scenario(client: Any, chat: str) -> dict[str, Any]:
    a, b = chat.split(":")
    out: dict[str, Any] = {"sends": [], "forward": []}
    for i in range(5):
        resp = await client.send(chat, f"m{i}", (a, b)[i % 2])
        out["sends"].append({"code": resp.Code, "msg": resp.Msg})
    cursor = 0
    for _ in range(10):
        page = page_of(await client.pull(chat, cursor=cursor, limit=2))
        out["forward"].append(page)
        if page["code"] != 0 or not page["has_more"]:
            break
        cursor = page["next_cursor"]
    out["reverse"] = page_of(await client.pull(chat, cursor=0, limit=3, reverse=True))
    resp = await client.send(chat, "intruder", "carol")
    out["invalid"] = {"code": resp.Code, "msg": resp.Msg}
    out["after"] = page_of(await client.pull(chat, limit=10))
    return out


async def test_chatclient_against_go_server(go_server: Proc, chat: str) -> None:
    from chatsvc.client import ChatClient

    async with ChatClient("127.0.0.1", go_server.port, transport="framed") as client:
        result = await chatclient_scenario(client, chat)
    check_scenario(result, chat)
    assert go_server.popen.poll() is None, go_server.output()


async def test_chatclient_buffered_against_go_server(go_bins: dict[str, Path], logdir: Path, chat: str) -> None:
    """The unframed transport too (what a Kitex <= v0.12 peer speaks), against a buffered Go server."""
    from chatsvc.client import ChatClient

    with running(start_go_server(go_bins["server"], logdir, transport="buffered")) as server:
        async with ChatClient("127.0.0.1", server.port, transport="buffered") as client:
            result = await chatclient_scenario(client, chat)
        assert server.popen.poll() is None, server.output()
    check_scenario(result, chat)


async def test_chatclient_gets_go_server_exception(go_server: Proc, chat: str) -> None:
    """A Go handler error reaches the Python client as a TApplicationException -> RPCError."""
    from chatsvc.client import ChatClient, RPCError

    a, _ = chat.split(":")
    client = ChatClient("127.0.0.1", go_server.port, transport="framed")
    try:
        with pytest.raises(RPCError):
            await client.send(chat, "boom", a)
    finally:
        await client.close()
    # The server is unharmed: a fresh client still works.
    async with ChatClient("127.0.0.1", go_server.port, transport="framed") as client:
        resp = await client.send(chat, "still here", a)
        assert (resp.Code, resp.Msg) == (0, "success")
        page = await client.pull(chat, cursor=0, limit=10)
    assert (page.Code, [m.Text for m in page.Messages]) == (0, ["still here"])
    assert go_server.popen.poll() is None, go_server.output()
