"""The RPC contract, loaded at run time from ``idl/idl_rpc.thrift`` with thriftpy2 (no generated code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import thriftpy2

IDL_PATH = Path(os.environ.get("CHATSVC_IDL", Path(__file__).resolve().parents[2] / "idl" / "idl_rpc.thrift"))

# module_name must end in "_thrift" for thriftpy2 to register the module so structs pickle.
idl_rpc: Any = thriftpy2.load(str(IDL_PATH), module_name="idl_rpc_thrift")
IMService: Any = idl_rpc.IMService
Message: Any = idl_rpc.Message
SendRequest: Any = idl_rpc.SendRequest
SendResponse: Any = idl_rpc.SendResponse
PullRequest: Any = idl_rpc.PullRequest
PullResponse: Any = idl_rpc.PullResponse
