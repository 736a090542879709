"""NAT pings honour Path (RFC 3327): a phone registered through an edge proxy is pinged
through that edge, with the Path as the Route set, and its answer comes back; a contact
registered directly is still pinged at its received address."""
from __future__ import annotations

import socket
import threading

from tests.support.nodes import Node, wait_until


class Edge:
    """A minimal Path-routing edge proxy on loopback: forwards requests that carry a
    Route to itself to the address in its Route URI's `received` parameter (what
    Kamailio's path module does for NATed phones), adding its Via; forwards answers
    back by Via. Requests without its Route are dropped: it cannot know the phone."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.forwarded = 0
        self.dropped: list[bytes] = []
        self.answered = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            if lines[0].startswith(b"SIP/2.0"):  # an answer: drop our Via, follow the next
                vias = [i for i, l in enumerate(lines) if l.lower().startswith(b"via:")]
                if len(vias) < 2 or b"z9hG4bKedge" not in lines[vias[0]]:
                    continue
                sent_by = lines[vias[1]].split(b" ")[2].split(b";")[0].decode()
                host, _, port = sent_by.rpartition(":")
                del lines[vias[0]]
                self.sock.sendto(b"\r\n".join(lines) + b"\r\n\r\n" + body, (host, int(port)))
                self.answered += 1
                continue
            routes = [i for i, l in enumerate(lines) if l.lower().startswith(b"route:")]
            mine = f"sip:127.0.0.1:{self.port};lr".encode()
            if not routes or mine not in lines[routes[0]]:
                self.dropped.append(lines[0])
                continue
            received = lines[routes[0]].split(b"received=sip:")[1].split(b">")[0].decode()
            host, _, port = received.rpartition(":")
            del lines[routes[0]]
            lines.insert(1, f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKedge"
                            f"{self.forwarded}".encode())
            self.sock.sendto(b"\r\n".join(lines) + b"\r\n\r\n" + body, (host, int(port)))
            self.forwarded += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


class Phone:
    """Answers every OPTIONS 200 (Vias echoed), records the Request-URIs."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.pinged: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data.startswith(b"OPTIONS "):
                continue
            self.pinged.append(data.split(b" ")[1])
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            keep = [h for h in head if h.split(b":", 1)[0].lower() in
                    (b"via", b"from", b"to", b"call-id", b"cseq")]
            self.sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) +
                             b"\r\nContent-Length: 0\r\n\r\n", addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_pings_go_through_the_path_and_answers_come_back(tmp_path) -> None:
    node = Node(tmp_path, workers=1,
                settings={"usrloc": {"natping_interval_s": 1},
                          "clusterer": {"seed_fallback_interval_s": 0.2}}).start()
    edge, phone, direct = Edge(), Phone(), Phone()
    try:
        register = (
            "REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{edge.port};branch=z9hG4bKreg-edge\r\n"
            "Via: SIP/2.0/UDP 10.0.0.99:5060;branch=z9hG4bKreg-ua;received=198.51.100.7\r\n"
            "From: <sip:phone@example.com>;tag=1\r\nTo: <sip:phone@example.com>\r\n"
            "Call-ID: path-1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 69\r\n"
            "Contact: <sip:phone@10.0.0.99:5060>\r\n"
            f"Path: <sip:127.0.0.1:{edge.port};lr;received=sip:127.0.0.1:{phone.port}>\r\n"
            "Supported: path\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n")
        edge.sock.sendto(register.encode(), ("127.0.0.1", node.sip_port))
        # and one phone registered directly, from another port than its Contact's
        direct.sock.sendto((
            "REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.98:5060;branch=z9hG4bKd;rport\r\n"
            "From: <sip:direct@example.com>;tag=2\r\nTo: <sip:direct@example.com>\r\n"
            "Call-ID: direct-1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            "Contact: <sip:direct@10.0.0.98:5060>\r\nExpires: 600\r\n"
            "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", node.sip_port))
        wait_until(lambda: node.mi("get_statistics", statistics=["usrloc:registered_contacts"])
                   ["usrloc:registered_contacts"] == 2, what="both registered")
        (contact,) = node.mi("ul_show_contact", aor="phone@example.com")["Contacts"]
        assert contact["Path"].startswith(f"<sip:127.0.0.1:{edge.port};lr")
        wait_until(lambda: phone.pinged and direct.pinged, timeout=15, what="both pinged")
        assert set(phone.pinged) == {b"sip:phone@10.0.0.99:5060"}
        assert set(direct.pinged) == {b"sip:direct@10.0.0.98:5060"}
        wait_until(lambda: node.mi("get_statistics", statistics=["nathelper:ping_replies"])
                   ["nathelper:ping_replies"] >= 2, what="answers back through the edge")
        assert edge.forwarded >= 1 and edge.answered >= 1
        assert edge.dropped == []  # every ping to the edge carried its Route
    finally:
        for peer in (edge, phone, direct):
            peer.close()
        node.stop()
