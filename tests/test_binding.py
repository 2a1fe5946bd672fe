"""Gateway request binding: Go encoding/json key and type rules, query-string fallback."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import binding
from gateway.binding import PullInput, SendInput, bind_pull, bind_send
from gateway.errors import BadRequest


def test_send_keys_match_case_insensitively():
    assert bind_send(b'{"CHAT": "a:b", "text": "hi", "SeNdEr": "a"}') == SendInput("a:b", "hi", "a")


def test_exact_key_and_last_duplicate_win():
    assert bind_send(b'{"chat": "x:y", "Chat": "a:b"}').chat == "a:b"
    assert bind_send(b'{"Chat": "a:b", "chat": "x:y"}').chat == "x:y"


def test_unicode_case_folding_like_go():
    # Go's EqualFold maps U+017F (long s) to s, so "ſender" binds to Sender.
    assert bind_send('{"\u017fender": "a"}'.encode()).sender == "a"


def test_unknown_keys_ignored_and_null_is_zero():
    assert bind_send(b'{"Chat": null, "Extra": [1], "Text": "t"}') == SendInput("", "t", "")


def test_empty_body_is_all_zero_values():
    assert bind_send(b"") == SendInput()
    assert bind_pull(b"  ", {}) == PullInput()


@pytest.mark.parametrize(
    "raw",
    [b'{"Chat": 1}', b'{"Text": ["x"]}', b'{"Sender": true}', b"[]", b'"a:b"', b"{", b"nul"],
)
def test_send_type_errors(raw):
    with pytest.raises(BadRequest):
        bind_send(raw)


def test_pull_types_and_ranges():
    assert bind_pull(b'{"Chat": "a:b", "Cursor": 9223372036854775807, "Limit": 2147483647, "Reverse": true}',
                     {}) == PullInput("a:b", 2**63 - 1, 2**31 - 1, True)
    for raw in (b'{"Limit": 2147483648}', b'{"Limit": -2147483649}', b'{"Cursor": 9223372036854775808}',
                b'{"Limit": 1.0}', b'{"Limit": "1"}', b'{"Cursor": false}', b'{"Reverse": 0}',
                b'{"Reverse": "false"}', b'{"Limit": 1e2}'):
        with pytest.raises(BadRequest):
            bind_pull(raw, {})


def test_negative_numbers_pass_binding_for_the_service_to_reject():
    assert bind_pull(b'{"Limit": -1, "Cursor": -2}', {}) == PullInput("", -2, -1, False)


def test_pull_from_query_string():
    assert bind_pull(b"", {"chat": "a:b", "CURSOR": "5", "limit": "20", "reverse": "TRUE"}) == PullInput(
        "a:b", 5, 20, True)
    assert bind_pull(b"", {"reverse": "0"}).reverse is False


@pytest.mark.parametrize("query", [{"limit": "1.5"}, {"limit": "x"}, {"cursor": "1e3"}, {"reverse": "yes"},
                                   {"limit": "99999999999"}, {"cursor": ""}])
def test_bad_query_values(query):
    with pytest.raises(BadRequest):
        bind_pull(b"", query)


@pytest.mark.parametrize("digits", ["\u0663", "\uff11\uff12", "1\u0660", "\u09e7"])
def test_query_integers_are_ascii_digits_only(digits):
    """Regression: ``\\d`` also matched Arabic-Indic, fullwidth and Bengali digits, which ``int()``
    then accepted (limit=٣ was 3); Go's strconv.ParseInt rejects them."""
    with pytest.raises(BadRequest):
        bind_pull(b"", {"chat": "a:b", "limit": digits})
    with pytest.raises(BadRequest):
        bind_pull(b"", {"chat": "a:b", "cursor": digits})


def test_body_wins_over_query():
    assert bind_pull(b'{"Limit": 3}', {"limit": "20", "chat": "a:b"}) == PullInput("a:b", 0, 3, False)


def test_lone_surrogate_is_malformed_json():
    with pytest.raises(BadRequest):
        bind_send(b'{"Text": "\\ud800"}')


_keys = st.sampled_from(["Chat", "chat", "CHAT", "cHat", "Text", "text", "Sender", "sender", "Cursor", "cursor",
                         "Limit", "limit", "Reverse", "reverse", "Extra"])
_values = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=False),
                    st.integers(-(2**63), 2**64 - 1), st.sampled_from([2**31 - 1, 2**31, -(2**31), 2**63 - 1, 2**63]))


def _general(bound: type, fields: binding.Fields, obj: dict, query: dict) -> object:
    try:
        values = binding.query_values(query, fields) if query else {}
        values.update(binding.bind(obj, fields))
        return bound(**values)
    except BadRequest as exc:
        return str(exc)


def _fast(bind, *args) -> object:
    try:
        return bind(*args)
    except BadRequest as exc:
        return str(exc)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5), st.dictionaries(st.sampled_from(["chat", "limit"]),
                                                                    st.sampled_from(["a:b", "7"]), max_size=2))
def test_the_usual_bodies_bind_as_the_general_rules_do(obj, query):
    """bind_send and bind_pull take the usual body without bind's loop: the same result (or the
    same 400) as the general rules for any object."""
    body = orjson.dumps(obj)
    parsed = orjson.loads(body)  # the JSON round trip may change a value's type (a float to an int)
    assert _fast(bind_send, body) == _general(SendInput, binding.SEND_FIELDS, parsed, {})
    assert _fast(bind_pull, body, query) == _general(PullInput, binding.PULL_FIELDS, parsed, query)
