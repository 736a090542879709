"""The one canonical AOR (core.sip.canonical_aor / aor_of / aor_key): a table of URIs
and their keys (RFC 3261 §10.3 step 5, §19.1.4), the refusals, and the proof that the
To fast path answers exactly what the general path answers."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcluster.core import sip
from fastcluster.core.sip import SipParseError, aor_key, aor_of, canonical_aor


@pytest.mark.parametrize("uri, key", [
    ("sip:alice@example.com", "alice@example.com"),
    ("sip:alice@EXAMPLE.com", "alice@example.com"),  # host: case-insensitive
    ("SIP:alice@example.com", "alice@example.com"),  # scheme too
    ("sip:Alice@example.com", "Alice@example.com"),  # user: case-sensitive
    ("sips:alice@example.com", "sips:alice@example.com"),  # another AOR than sip:
    ("sip:alice@example.com:5060", "alice@example.com:5060"),  # explicit port kept
    ("sip:alice@example.com;transport=tcp", "alice@example.com"),  # params dropped
    ("sip:alice@example.com;user=phone?subject=x", "alice@example.com"),  # and headers
    ("sip:%61lice@example.com", "alice@example.com"),  # escaped literal: unescaped
    ("sip:%75se%72@example.com", "user@example.com"),  # RFC 4475 §3.1.1.3
    ("sip:al%2aice@example.com", "al*ice@example.com"),
    ("sip:I%20have%20spaces@example.net", "I%20have%20spaces@example.net"),
    ("sip:a%3ab@example.com", "a%3Ab@example.com"),  # kept escaped, hex upper-cased
    ("sip:null-%00-null@example.com", "null-%00-null@example.com"),  # RFC 4475 §3.1.1.4
    ("sip:sips%3Auser%40example.com@example.net", "sips%3Auser%40example.com@example.net"),
    ("sip:user;par=u%40example.net@example.com", "user;par=u%40example.net@example.com"),
    ("sip:+15551111@example.com;user=phone", "+15551111@example.com"),
    ("sip:example.com", "example.com"),  # a domain AOR
    ("sip:alice@[2001:DB8:0::10]", "alice@[2001:db8::10]"),  # one IPv6 spelling
    ("sip:alice@[2001:db8::10]:5070", "alice@[2001:db8::10]:5070"),
    ("sip:alice@192.0.2.1", "alice@192.0.2.1"),
    (" sip:alice@example.com ", "alice@example.com"),
])
def test_canonical_aor(uri: str, key: str) -> None:
    assert canonical_aor(uri) == key


@pytest.mark.parametrize("uri, status", [
    ("tel:+15551111", 416),  # not a registrar AOR (RFC 4475 §3.1.4.4)
    ("tel:+15552222", 416),
    ("isbn:2983792873", 416),
    ("nobodyKnowsThisScheme:x", 416),
    ("http://www.example.com", 416),
    ("sip:2001:db8::10", 400),  # an IPv6 address without brackets (RFC 5118 §4.2)
    ("sip:user@[2001:db8:::192.0.2.1]", 400),  # RFC 5118 §4.10: not an IPv6 address
    ("sip:a@b@example.com", 400),
    ("sip:alice:secret@example.com", 400),  # a password in an AOR
    ("sip:", 400),
    ("sip:alice@exa mple.com", 400),
    ("sip:alice@example.com:99999", 400),
])
def test_canonical_aor_refuses(uri: str, status: int) -> None:
    with pytest.raises(SipParseError) as err:
        canonical_aor(uri)
    assert err.value.status == status


@pytest.mark.parametrize("to, key", [
    ("<sip:alice@example.com>", "alice@example.com"),
    ("<sip:alice@Example.COM>;tag=123", "alice@example.com"),
    ('"Alice" <sip:alice@example.com>;tag=1', "alice@example.com"),
    ("sip:alice@example.com;tag=9", "alice@example.com"),  # addr-spec: ;tag is a header param
    ("<sip:alice@example.com;transport=udp>", "alice@example.com"),
    ('"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*'
     '@example.com>', "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com"),
    ("<sips:alice@example.com>", "sips:alice@example.com"),
])
def test_aor_of_to_values(to: str, key: str) -> None:
    assert aor_of(to) == key


@pytest.mark.parametrize("to, status", [
    ("<tel:+15551111>", 416),
    ("<tel:+15551111>;tag=1", 416),
    ("isbn:2983792873", 416),
    ("<sip:alice@example.com", 400),
    ("garbage", 400),
])
def test_aor_of_refuses(to: str, status: int) -> None:
    with pytest.raises(SipParseError) as err:
        aor_of(to)
    assert err.value.status == status


def test_tel_aors_never_share_a_record() -> None:
    # the bug this replaces: every tel: AOR became one key, so a wildcard removal from
    # one number deleted another's bindings; now none of them is a key at all
    for number in ("tel:+15551111", "tel:+15552222"):
        with pytest.raises(SipParseError):
            aor_of(f"<{number}>")


@pytest.mark.parametrize("text, key", [
    ("alice@example.com", "alice@example.com"),
    ("alice@EXAMPLE.com", "alice@example.com"),
    ("sip:alice@example.com", "alice@example.com"),
    ("<sip:alice@example.com>", "alice@example.com"),
    ("sips:alice@example.com", "sips:alice@example.com"),
    ("%61lice@example.com", "alice@example.com"),
    ("example.com", "example.com"),
])
def test_aor_key_of_operator_input(text: str, key: str) -> None:
    assert aor_key(text) == key


def _slow(to: str) -> str:
    return canonical_aor(sip.parse_name_addr(to).uri)


USER = st.text(alphabet="abcAZ09-_.!~*'()&=+$,;?/%:@", min_size=0, max_size=8)
HOST = st.text(alphabet="abcXYZ09.-_[]:", min_size=0, max_size=10)
TAIL = st.sampled_from(["", ";tag=1", ";tag=a.b", ";tag", ";tag=1;x=y", " ;tag=1", ";=",
                        ";tag=\"q\"", ">", "x"])


@settings(max_examples=3000, deadline=None, database=None)
@given(USER, HOST, TAIL, st.sampled_from(["sip", "SIP", "sips", "tel"]))
def test_fast_path_agrees_with_the_general_path(user: str, host: str, tail: str,
                                                scheme: str) -> None:
    to = f"<{scheme}:{user}@{host}>{tail}"
    try:
        expected: str | int = _slow(to)
    except SipParseError as exc:
        expected = exc.status
    try:
        got: str | int = aor_of(to)
    except SipParseError as exc:
        got = exc.status
    assert got == expected
    if sip._PLAIN_TO_RE.fullmatch(to) is not None:  # the fast path answered
        assert isinstance(got, str)


@settings(max_examples=1000, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=6))
def test_escaping_is_normalised_one_key_per_unescaped_user(raw: bytes) -> None:
    escaped_all = "".join(f"%{b:02x}" for b in raw)
    literal = "".join(chr(b) if b in sip._USER_LITERAL else f"%{b:02X}" for b in raw)
    assert canonical_aor(f"sip:{escaped_all}@h") == canonical_aor(f"sip:{literal}@h") \
        == f"{literal}@h"
