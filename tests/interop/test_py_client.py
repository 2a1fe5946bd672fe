"""Apache Thrift's Python library (code from ``thrift --gen py``) calling a running chatsvc.

Blocking clients, so these tests are sync. Both transports chatsvc must sniff (unframed
TBufferedTransport and TFramedTransport), with the strict binary protocol in its pure-Python and
its C-accelerated (fastbinary) implementations.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest

from tests.interop.scenario import check_scenario, page_of
from tests.procs import need_tool

pytestmark = pytest.mark.interop


def run_scenario(gen: SimpleNamespace, host: str, port: int, transport: str, protocol: str,
                 chat: str) -> dict[str, Any]:
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    ttypes = gen.ttypes
    sock = TSocket.TSocket(host, port)
    sock.setTimeout(15_000)
    trans = TTransport.TFramedTransport(sock) if transport == "framed" else TTransport.TBufferedTransport(sock)
    if protocol == "accelerated":
        proto = TBinaryProtocol.TBinaryProtocolAccelerated(trans, strictRead=True, strictWrite=True)
    else:
        proto = TBinaryProtocol.TBinaryProtocol(trans, strictRead=True, strictWrite=True)
    client = gen.IMService.Client(proto)
    a, b = chat.split(":")
    out: dict[str, Any] = {"sends": [], "forward": []}
    trans.open()
    try:
        for i in range(5):
            # SendTime left as None: the field is not written, the server assigns it.
            msg = ttypes.Message(Chat=chat, Text=f"m{i}", Sender=(a, b)[i % 2])
            resp = client.Send(ttypes.SendRequest(message=msg))
            out["sends"].append({"code": resp.Code, "msg": resp.Msg})
        cursor = 0
        for _ in range(10):
            # Reverse (optional) left unset on the forward pages.
            page = page_of(client.Pull(ttypes.PullRequest(Chat=chat, Cursor=cursor, Limit=2)))
            out["forward"].append(page)
            if page["code"] != 0 or not page["has_more"]:
                break
            cursor = page["next_cursor"]
        out["reverse"] = page_of(client.Pull(ttypes.PullRequest(Chat=chat, Cursor=0, Limit=3, Reverse=True)))
        bad = ttypes.Message(Chat=chat, Text="intruder", Sender="carol", SendTime=0)
        resp = client.Send(ttypes.SendRequest(message=bad))
        out["invalid"] = {"code": resp.Code, "msg": resp.Msg}
        out["after"] = page_of(client.Pull(ttypes.PullRequest(Chat=chat, Cursor=0, Limit=10, Reverse=False)))
    finally:
        trans.close()
    return out


@pytest.mark.parametrize("protocol", ["binary", "accelerated"])
@pytest.mark.parametrize("transport", ["buffered", "framed"])
def test_python_apache_thrift_client(py_gen: SimpleNamespace, chatsvc_addr: tuple[str, int], chat: str,
                                     transport: str, protocol: str) -> None:
    if protocol == "accelerated":
        need_tool(importlib.util.find_spec("thrift.protocol.fastbinary") is not None,
                  "thrift was built without its C extension (fastbinary)")
    host, port = chatsvc_addr
    check_scenario(run_scenario(py_gen, host, port, transport, protocol, chat), chat)


def test_python_client_unknown_method(py_gen: SimpleNamespace, chatsvc_addr: tuple[str, int]) -> None:
    """A method chatsvc does not have comes back as TApplicationException UNKNOWN_METHOD."""
    from thrift.protocol import TBinaryProtocol
    from thrift.Thrift import TApplicationException, TMessageType
    from thrift.transport import TSocket, TTransport

    sock = TSocket.TSocket(*chatsvc_addr)
    sock.setTimeout(10_000)
    trans = TTransport.TFramedTransport(sock)
    proto = TBinaryProtocol.TBinaryProtocol(trans, strictRead=True, strictWrite=True)
    trans.open()
    try:
        proto.writeMessageBegin("Foo", TMessageType.CALL, 42)
        proto.writeStructBegin("Foo_args")
        proto.writeFieldStop()
        proto.writeStructEnd()
        proto.writeMessageEnd()
        trans.flush()
        name, mtype, seqid = proto.readMessageBegin()
        exc = TApplicationException()
        exc.read(proto)
        proto.readMessageEnd()
    finally:
        trans.close()
    assert (name, mtype, seqid) == ("Foo", TMessageType.EXCEPTION, 42)
    assert exc.type == TApplicationException.UNKNOWN_METHOD
    assert "Foo" in (exc.message or "")
