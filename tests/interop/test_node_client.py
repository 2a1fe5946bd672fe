"""Node.js with the npm ``thrift`` package (code from ``thrift --gen js:node``) calling chatsvc.

``node/client.js`` runs the scenario and prints JSON; the expectations live here
(``scenario.check_scenario``). ``make interop-deps`` installs the npm package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import NODE_DIR
from tests.interop.scenario import check_scenario

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("transport", ["buffered", "framed"])
def test_node_apache_thrift_client(node_gen: Path, chatsvc_addr: tuple[str, int], chat: str,
                                   transport: str) -> None:
    host, port = chatsvc_addr
    node = shutil.which("node")
    assert node is not None
    env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    proc = subprocess.run([node, str(NODE_DIR / "client.js"), host, str(port), transport, str(node_gen), chat],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, f"client.js exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout)
    assert (result["client"], result["transport"]) == ("node", transport)
    check_scenario(result, chat)
