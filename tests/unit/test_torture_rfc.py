"""The well-formed messages of RFC 4475 §3.1.1 and the IPv6 messages of RFC 5118 §4,
written out for this suite from the RFCs' text (CRLF line ends; where a body's bytes
cannot be typed -- the binary part of §3.1.1.11 -- a body of the same nature is used,
and Content-Length is the length of the body as written here). Each is parsed, checked
for what the RFC says it exercises, and answered by SipApp as a registrar and proxy must answer it: well-formed messages
never get 400 (a request for a user nobody registered is proxied to nowhere: 404; one
for this node itself that it does not serve: 405/501/481), the invalid ones of RFC 5118
do."""
from __future__ import annotations

import pytest

from fastcluster.core.sip import (
    aor_of,
    parse_contacts,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    tag_of,
)
from fastcluster.services.sip import checks
from tests.support.registrar import Harness

CRLF = "\r\n"


def text(*lines: str, body: bytes = b"") -> bytes:
    return (CRLF.join(lines) + CRLF + CRLF).encode() + body


def lines(*body_lines: str) -> bytes:
    return "".join(line + CRLF for line in body_lines).encode()


def answer(data: bytes) -> int:
    h = Harness()
    h.app.handle(data, ("192.0.2.77", 5060), h.listener)
    assert h.sock.sent, "the request was dropped"
    return int(h.sock.sent[-1][0].split(b" ", 2)[1])


SDP = lines("v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.3", "s=-", "c=IN IP4 192.0.2.4",
            "t=0 0", "m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31",
            "a=rtpmap:31 LPC")

# 3.1.1.1 A short tortuous INVITE
WSINV = text(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=SDP)


def test_wsinv() -> None:
    m = parse_message(WSINV)
    assert (m.method, m.ruri) == ("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam")
    assert (m.cseq_num, m.cseq_method, m.max_forwards) == (9, "INVITE", 68)
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1" and len(m.body) == m.content_length == 150
    assert tag_of(m.to) == "1918181833n" and tag_of(m.from_) == "98asjd8"
    assert parse_name_addr(m.from_).display == 'J Rosenberg \\"'
    vias = [parse_via(v) for v in m.get_all("via")]
    assert [(v.transport, v.host, v.params["branch"]) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    (c,) = parse_contacts(m)
    assert c.display == 'Quoted string ""' and c.uri == "sip:jdrosen@example.com"
    assert c.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.get("subject") == "" and m.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert m.get("newfangledheader") == "newfangled value continued newfangled value"
    assert aor_of(m.to) == "vivekg@chair-dnrc.example.com"
    assert answer(WSINV) == 404  # well formed; proxied, and vivekg never registered


# 3.1.1.2 Wide range of valid characters
INTMETH = (
    "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$"
    "/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n"
    'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*'
    "@example.com>\r\n"
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439";tag=_token~1\'+`*%!-.\r\n'
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n"
    "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n"
    "Max-Forwards: 255\r\n"
    "extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb\r\n"
    "Content-Length: 0\r\n\r\n").encode()


def test_intmeth() -> None:
    m = parse_message(INTMETH)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq_num == 139122385 and m.max_forwards == 255
    u = parse_uri(m.ruri)
    assert (u.user, u.password, u.host) == ("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
                                            "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)",
                                            "example.com")
    assert parse_name_addr(m.to).display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    f = parse_name_addr(m.from_)
    assert f.display == "token1~` token2'+_ token3*%!.-"
    assert f.params["fromparam''~+*_!.-%"] == "работающий"
    assert f.params["tag"] == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert answer(INTMETH) == 404  # an unknown method to a user: proxied like any other


# 3.1.1.3 Valid use of the % escaping mechanism
ESC01 = text(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
    "To: sip:%75se%72@example.com",
    "From: <sip:I%20have%20spaces@example.net>;tag=938",
    "Max-Forwards: 87",
    "i: esc01.239409asdfakjkn23onasd0-3234",
    "CSeq: 234234 INVITE",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
    "C: application/sdp",
    "Contact:",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
    "Content-Length: 150",
    body=lines("v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1",
               "t=0 0", "m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31",
               "a=rtpmap:31 LPC"))


def test_esc01() -> None:
    m = parse_message(ESC01)
    assert parse_uri(m.ruri).user == "sips%3Auser%40example.com"
    assert aor_of(m.to) == "user@example.com"  # %75se%72 is user
    assert aor_of(m.from_) == "I%20have%20spaces@example.net"
    (c,) = parse_contacts(m)
    assert parse_uri(c.uri).params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234" and len(m.body) == 150
    assert answer(ESC01) == 404


# 3.1.1.4 Escaped nulls in URIs
ESCNULL = text(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:null-%00-null@example.com",
    "From: sip:null-%00-null@example.com;tag=839923423",
    "Max-Forwards: 70",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "Contact: <sip:%00@host5.example.com>",
    "Contact: <sip:%00%00@host5.example.com>",
    "L:0")


def test_escnull_registers_two_contacts_under_the_whole_user() -> None:
    m = parse_message(ESCNULL)
    assert aor_of(m.to) == "null-%00-null@example.com"  # not cut at the NUL
    h = Harness()
    h.app.handle(ESCNULL, ("192.0.2.77", 5060), h.listener)
    assert h.sock.sent[-1][0].startswith(b"SIP/2.0 200 ")
    assert sorted(c["uri"] for c in h.contacts("null-%00-null@example.com")) == [
        "sip:%00%00@host5.example.com", "sip:%00@host5.example.com"]


# 3.1.1.5 Use of % when it is not an escape
ESC02 = text(
    "RE%47IST%45R sip:registrar.example.com SIP/2.0",
    'To: "%Z%45" <sip:resource@example.com>',
    'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234",
    "CSeq: 29344 RE%47IST%45R",
    "Max-Forwards: 70",
    "Contact: <sip:alias1@host1.example.com>",
    "C%6Fntact: <sip:alias2@host2.example.com>",
    "Contact: <sip:alias3@host3.example.com>",
    "l: 0")


def test_esc02() -> None:
    m = parse_message(ESC02)
    assert m.method == "RE%47IST%45R" and parse_name_addr(m.to).display == "%Z%45"
    assert [c.uri for c in parse_contacts(m)] == ["sip:alias1@host1.example.com",
                                                 "sip:alias3@host3.example.com"]
    assert m.get("c%6fntact") == "<sip:alias2@host2.example.com>"
    assert answer(ESC02) == 501  # not REGISTER


# 3.1.1.6 Message with no LWS between display name and <
LWSDISP = text(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: caller<sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID: lwsdisp.1234abcd@funky.example.com",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
    "l: 0")


def test_lwsdisp() -> None:
    m = parse_message(LWSDISP)
    f = parse_name_addr(m.from_)
    assert (f.display, f.uri, f.params) == ("caller", "sip:caller@example.com", {"tag": "323"})
    assert answer(LWSDISP) == 404  # an OPTIONS for a user: proxied


# 3.1.1.7 Long values in header fields
LONG = "long" * 20
LONGREQ_VIAS = (["Via: SIP/2.0/TCP sip33.example.com", "v: SIP/2.0/TCP sip32.example.com",
                 "V: SIP/2.0/TCP sip31.example.com", "Via: SIP/2.0/TCP sip30.example.com",
                 "ViA: SIP/2.0/TCP sip29.example.com", "VIa: SIP/2.0/TCP sip28.example.com",
                 "VIA: SIP/2.0/TCP sip27.example.com", "via: SIP/2.0/TCP sip26.example.com",
                 "viA: SIP/2.0/TCP sip25.example.com", "vIa: SIP/2.0/TCP sip24.example.com",
                 "vIA: SIP/2.0/TCP sip23.example.com", "V :  SIP/2.0/TCP sip22.example.com",
                 "v :  SIP/2.0/TCP sip21.example.com", "V  : SIP/2.0/TCP sip20.example.com",
                 "v  : SIP/2.0/TCP sip19.example.com", "Via : SIP/2.0/TCP sip18.example.com",
                 "Via  : SIP/2.0/TCP sip17.example.com"]
                + [f"Via: SIP/2.0/TCP sip{i}.example.com" for i in range(16, 0, -1)]
                + ["Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very"
                   + "long" * 50 + "branchvalue"])
LONGREQ = text(
    "INVITE sip:user@example.com SIP/2.0",
    'To: "I have a user name of ' + "extreme" * 10 + ' proportion"<sip:user@example.com:6000;'
    "unknownparam1=very" + LONG + "value;longparam" + "name" * 25 + "=shortvalue;very"
    + "long" * 25 + "ParameterNameWithNoValue>",
    "F: sip:" + "amazinglylongcallername" * 5 + "@example.net;tag=12" + "982" * 50 + "424;"
    "unknownheaderparam" + "name" * 20 + "=unknowheaderparam" + "value" * 15 + ";"
    "unknownValueless" + "paramname" * 10,
    "Call-ID: longreq.one" + "really" * 20 + "longcallid",
    "CSeq: 3882340 INVITE",
    "Unknown-" + "Long" * 20 + "-Name: unknown-" + LONG + "-value; unknown-" + LONG
    + "-parameter-name = unknown-" + LONG + "-parameter-value",
    *LONGREQ_VIAS,
    "Max-Forwards: 70",
    "Contact: <sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>",
    "Content-Type: application/sdp",
    "l: 150",
    body=lines("v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1",
               "t=0 0", "m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31",
               "a=rtpmap:31 LPC"))


def test_longreq() -> None:
    m = parse_message(LONGREQ)
    assert len(m.vias) == 34 and parse_via(m.vias[-1]).params["received"] == "192.0.2.5"
    assert [parse_via(v).host for v in m.vias[:3]] == ["sip33.example.com",
                                                      "sip32.example.com", "sip31.example.com"]
    to = parse_name_addr(m.to)
    assert to.display.endswith(" proportion") and parse_uri(to.uri).port == 6000
    assert tag_of(m.from_) == "12" + "982" * 50 + "424"
    assert len(m.body) == 150
    reply = Harness()
    reply.app.handle(LONGREQ, ("192.0.2.77", 5060), reply.listener)
    out = reply.sock.sent[-1][0]
    assert out.startswith(b"SIP/2.0 404 ") and out.count(b"\r\nVia: ") == 34


# 3.1.1.8 Extra trailing octets in a UDP datagram
DBLREQ = text(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=43251j3j324",
    "Max-Forwards: 8",
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
    "Contact: sip:j.user@host.example.com",
    "CSeq: 8 REGISTER",
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
    "Content-Length: 0",
    body=text("INVITE sip:joe@example.com SIP/2.0", "t: sip:joe@example.com",
              "From: sip:caller@example.net;tag=141334", "Max-Forwards: 8",
              "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15", "CSeq: 8 INVITE",
              "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
              "Content-Type: application/sdp", "Content-Length: 150",
              body=lines("v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.15", "s=-",
                         "c=IN IP4 192.0.2.15", "t=0 0", "m=audio 49217 RTP/AVP 0 12",
                         "m =video 3227 RTP/AVP 31", "a=rtpmap:31 LPC")))


def test_dblreq_registers_and_ignores_the_trailing_invite() -> None:
    m = parse_message(DBLREQ)
    assert m.method == "REGISTER" and m.body == b"" and m.call_id.startswith("dblreq.0ha0isndaksdj")
    h = Harness()
    h.app.handle(DBLREQ, ("192.0.2.125", 5060), h.listener)
    assert len(h.sock.sent) == 1 and h.sock.sent[0][0].startswith(b"SIP/2.0 200 ")
    assert [c["uri"] for c in h.contacts("j.user@example.com")] == \
        ["sip:j.user@host.example.com"]


# 3.1.1.9 Semicolon-separated parameters in URI user part
SEMIURI = text(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Call-ID: semiuri.0ha0isndaksdj",
    "CSeq: 8 OPTIONS",
    "Accept: application/sdp, application/pkcs7-mime,",
    "        multipart/mixed, multipart/signed,",
    "        message/sip, message/sipfrag",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
    "l: 0")


def test_semiuri() -> None:
    m = parse_message(SEMIURI)
    u = parse_uri(m.ruri)
    assert (u.user, u.host, u.params) == ("user;par=u%40example.net", "example.com", {})
    assert len(m.get_all("accept")) == 6
    assert answer(SEMIURI) == 404


# 3.1.1.10 Varied and unknown transport types
TRANSPORTS = text(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: <sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
    "Accept: application/sdp",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
    "l: 0")


def test_transports() -> None:
    m = parse_message(TRANSPORTS)
    assert [parse_via(v).transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"
    assert answer(TRANSPORTS) == 404


# 3.1.1.11 Multipart MIME message (a binary part with NUL octets)
BOUNDARY = "7a9cbec02ceef655"
BINARY = bytes(range(256)) + b"\r\n\r\n\x00\x00" + bytes(range(255, -1, -1))
MPART = (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
         f"\r\nHello\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
         "Content-Transfer-Encoding: binary\r\n\r\n").encode() + BINARY + \
    f"\r\n--{BOUNDARY}--\r\n".encode()
MPART01 = text(
    "MESSAGE sip:kumiko@example.org SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
    "Max-Forwards: 70",
    "Route: <sip:127.0.0.1:5080>",
    "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+8"
    "13gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivU"
    "hkMWYUA=",
    "Contact: <sip:fluffy@127.0.0.1:5070>",
    "To: <sip:kumiko@example.org>",
    "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
    "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
    "CSeq: 1 MESSAGE",
    "Content-Transfer-Encoding: binary",
    f"Content-Type: multipart/mixed;boundary={BOUNDARY}",
    "Date: Sat, 15 Oct 2005 04:44:56 GMT",
    "User-Agent: SIPimp.org/0.2.5 (curses)",
    f"Content-Length: {len(MPART)}",
    body=MPART) + b"trailing noise past Content-Length"


def test_mpart01_frames_the_binary_body() -> None:
    m = parse_message(MPART01)
    assert m.body == MPART and m.content_length == len(MPART)
    h = Harness()  # proxied by its Route, the body's bytes as they came
    h.app.handle(MPART01, ("192.0.2.77", 5060), h.listener)
    (out, to), = h.sock.sent
    assert to == ("127.0.0.1", 5080) and out.startswith(b"MESSAGE sip:kumiko@example.org ")
    assert parse_message(out).body == MPART


# 3.1.1.12 Unusual reason phrase
UNREASON = text(
    "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host198.example.com>",
    body=lines("v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.198", "s=-",
               "c=IN IP4 192.0.2.198", "t=0 0", "m=audio 49217 RTP/AVP 0 12",
               "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC"))

# 3.1.1.13 Empty reason phrase (the SP after the code is there)
NOREASON = text(
    "SIP/2.0 100 ",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: noreason.asndj203insdf99223ndf",
    "CSeq: 35 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>")


def test_responses_with_unusual_reasons() -> None:
    m = parse_message(UNREASON)
    assert (m.status, m.reason) == (200, "= 2**3 * 5**2 но сто девяносто девять - простое")
    assert len(m.body) == 154
    m = parse_message(NOREASON)
    assert (m.status, m.reason, m.cseq_method) == (100, "", "INVITE")


# RFC 5118 §4: IPv6 references.
def v6(first: str, *headers: str, body: bytes = b"") -> bytes:
    return text(first, *headers, f"Content-Length: {len(body)}", body=body)


COMMON = ("To: sip:user@example.com", "From: sip:user@example.com;tag=81x2",
          "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
          "Call-ID: SSG9559905523997077@hlau_4100", "Max-Forwards: 70",
          'Contact: "Caller" <sip:caller@[2001:db8::1]>', "CSeq: 98176 REGISTER")
SDP6 = lines("v=0", "o=assistant 971731711378798081 0 IN IP6 2001:db8::20",
             "s=Live video feed for today's meeting", "c=IN IP6 2001:db8::20",
             "t=3338481189 3370017201", "m=audio 6000 RTP/AVP 2", "a=rtpmap:2 G726-32/8000",
             "m=video 6024 RTP/AVP 107", "a=rtpmap:107 H263-1998/90000")
SDP_MULTI = lines("v=0", "o=bob 280744730 28977631 IN IP4 host.example.com", "s=", "t=0 0",
                  "m=audio 22334 RTP/AVP 0", "c=IN IP4 192.0.2.1", "m=video 6024 RTP/AVP 107",
                  "c=IN IP6 2001:db8::1", "a=rtpmap:107 H263-1998/90000")
SDP_MAPPED = lines("v=0", "o=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2",
                   "s=Call me soon, please!", "c=IN IP6 ::ffff:192.0.2.2",
                   "t=3338481189 3370017201", "m=audio 6000 RTP/AVP 2",
                   "a=rtpmap:2 G726-32/8000", "m=video 6024 RTP/AVP 107",
                   "a=rtpmap:107 H263-1998/90000")
OPT_1010 = ("From: sip:user@example.com;tag=810x2",
            "Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111",
            "Call-ID: G9559905523997077@hlau_4100", "CSeq: 689 OPTIONS", "Max-Forwards: 70")

RFC5118 = {
    "4.1 valid IPv6 reference": (v6("REGISTER sip:[2001:db8::10] SIP/2.0", *COMMON), 200),
    "4.2 IPv6 reference without brackets": (v6("REGISTER sip:2001:db8::10 SIP/2.0", *COMMON),
                                            400),
    "4.3 port ambiguous (well formed)": (v6("REGISTER sip:[2001:db8::10:5070] SIP/2.0",
                                            *COMMON), 200),
    "4.4 port unambiguous": (v6("REGISTER sip:[2001:db8::10]:5070 SIP/2.0", *COMMON), 200),
    "4.5 received with brackets": (v6(
        "BYE sip:[2001:db8::10] SIP/2.0", "To: sip:user@example.com;tag=bd76ya",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100", "Max-Forwards: 70", "CSeq: 321 BYE"), 481),
    "4.5 received without brackets": (v6(
        "OPTIONS sip:[2001:db8::10] SIP/2.0", "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3",
        "Call-ID: SSG95523997077@hlau_4100", "Max-Forwards: 70",
        'Contact: "Caller" <sip:caller@[2001:db8::9:1]>', "CSeq: 921 OPTIONS"), 200),
    "4.6 IPv6 in SDP": (v6(
        "INVITE sip:user@[2001:db8::10] SIP/2.0", "To: sip:user@[2001:db8::10]",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "Caller" <sip:caller@[2001:db8::20]>', "CSeq: 8612 INVITE",
        "Max-Forwards: 70", "Content-Type: application/sdp", body=SDP6), 404),
    "4.7 IPv4 and IPv6 in Vias": (v6(
        "BYE sip:user@host.example.net SIP/2.0",
        "Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144",
        "Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
        "Call-ID: 997077@lau_4100", "Max-Forwards: 70", "CSeq: 89187 BYE",
        "To: sip:user@example.net;tag=9817--94", "From: sip:user@example.com;tag=81x2"), 404),
    "4.8 IPv4 and IPv6 in SDP": (v6(
        "INVITE sip:user@[2001:db8::10] SIP/2.0", "To: sip:user@[2001:db8::10]",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "Caller" <sip:caller@[2001:db8::9:1]>', "Max-Forwards: 70",
        "CSeq: 8912 INVITE", "Content-Type: application/sdp", body=SDP_MULTI), 404),
    "4.9 IPv4-mapped IPv6": (v6(
        "INVITE sip:user@example.com SIP/2.0", "To: sip:user@example.com",
        "From: sip:user@east.example.com;tag=81x2",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
        "Via: SIP/2.0/UDP [::ffff:192.0.2.2];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        'Contact: "T. desk phone" <sip:ted@[::ffff:192.0.2.2]>', "CSeq: 612 INVITE",
        "Max-Forwards: 70", "Content-Type: application/sdp", body=SDP_MAPPED), 404),
    "4.10 three colons": (v6("OPTIONS sip:user@[2001:db8:::192.0.2.1] SIP/2.0",
                             "To: sip:user@[2001:db8:::192.0.2.1]", *OPT_1010), 400),
    "4.10 two colons": (v6("OPTIONS sip:user@[2001:db8::192.0.2.1] SIP/2.0",
                           "To: sip:user@[2001:db8::192.0.2.1]", *OPT_1010), 404),
}


@pytest.mark.parametrize("name", list(RFC5118))
def test_rfc5118(name: str) -> None:
    data, code = RFC5118[name]
    m = parse_message(data)  # every one frames and parses; the 400s are semantic
    assert m.vias and m.call_id
    assert answer(data) == code


def test_rfc5118_hosts() -> None:
    m = parse_message(RFC5118["4.3 port ambiguous (well formed)"][0])
    assert checks.request_uri_host(m.ruri) == "[2001:db8::10:5070]"  # no port
    m = parse_message(RFC5118["4.4 port unambiguous"][0])
    assert parse_uri(m.ruri).port == 5070
    m = parse_message(RFC5118["4.9 IPv4-mapped IPv6"][0])
    assert parse_via(m.vias[0]).port == 19823
    (c,) = parse_contacts(m)
    assert parse_uri(c.uri).host == "[::ffff:192.0.2.2]"
