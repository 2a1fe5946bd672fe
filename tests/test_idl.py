"""idl/ must stay byte for byte the original IDL: clients in other languages are generated from it."""

from __future__ import annotations

import hashlib

import pytest

from tests.procs import IN_CI, ROOT

ORIGINALS = ROOT.parent / "shared" / "idl"
PINNED = {
    "idl_rpc.thrift": "d78940a3b850a56f6e2bb6de33ac07259e384cb25e6c378ce7d02da33f51c9fd",
    "idl_http.proto": "dc8ec074344e1f1ca046229599f3e737bf2b4584f369c17b6c15e90abda77ed2",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_idl_matches_pinned_hash(name: str) -> None:
    assert hashlib.sha256((ROOT / "idl" / name).read_bytes()).hexdigest() == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_idl_equals_shared_original(name: str) -> None:
    original = ORIGINALS / name
    if not original.exists():
        if IN_CI:
            pytest.fail(f"{original} is missing: CI must have ../shared beside the checkout")
        pytest.skip("../shared/idl is not beside this checkout")
    assert (ROOT / "idl" / name).read_bytes() == original.read_bytes()


def test_service_is_loaded_from_the_idl_at_run_time() -> None:
    from chatsvc.wire import idl

    assert idl.IDL_PATH.resolve() == (ROOT / "idl" / "idl_rpc.thrift").resolve()
    assert idl.IMService.thrift_services == ["Send", "Pull"]
    assert 2 in idl.IMService.Pull_args.thrift_spec  # the IDL numbers Pull's argument 2
