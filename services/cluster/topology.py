"""Topology of the clusters this node belongs to: who is a member, which direct links are
Up, which nodes are reachable and through which next hop. Pure state and decisions;
the other modules of services.cluster do the I/O.

Direct link states (per peer, shared by every cluster the two nodes have in common):
  Probe  connected (or suspect) but not confirmed in both directions
  Up     both directions confirmed: we had a PONG to our PING, and the peer's latest
         message says it had a PONG from us ("ack")
  Down   closed or declared dead; retried every node_timeout_s
A node is *reachable* when a path of links confirmed by both ends leads to it (our own
Up links plus the link-state advertisements of the others); that is what clusterer_list
reports as Up, with its next hop. Decisions are pure functions tested with tables
(tests/unit/test_topology.py). Neighbours: services.cluster.heartbeat and routing (the
I/O around these decisions).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class Link(str, Enum):
    UP = "Up"
    PROBE = "Probe"
    DOWN = "Down"


@dataclass
class Peer:
    """What this node knows of another node (one per node id, shared by clusters)."""
    node_id: int
    url: tuple[str, int] | None = None  # its bin_listen
    sip: tuple[tuple[str, int], ...] = ()  # its SIP listeners (cluster_check_addr)
    clusters: frozenset[int] = frozenset()
    incarnation: int = 0
    enabled: bool = True
    left: bool = False  # said LEAVE: down at once, not after a timeout
    static: bool = False  # provisioned in the INI
    remembered: bool = False  # known from the data directory (a member before a restart)
    last_seen_ms: int = 0  # monotonic: last time reachable (a member unseen for long is
    #                        forgotten)
    link: Link = Link.DOWN
    link_since_ms: int = 0
    last_rx_ms: int = 0  # any frame counts as liveness
    last_tx_ms: int = 0
    ping_sent_ms: int = 0  # outstanding ping (0: none)
    pong_ms: int = 0  # last PONG to our PING: our direction works
    peer_ack: bool = False  # the peer says its direction works
    probing_since_ms: int = 0  # first indirect probe round (0: not probing)
    probe_round_ms: int = 0  # current round; a round that heard "alive" is repeated
    probe_alive: bool = False  # in the current round, some other node still hears it
    probe_answers: set[int] = field(default_factory=set)
    next_retry_ms: int = 0  # when a Down peer is dialled again
    rtt_ms: int = 0  # last PING -> PONG round trip
    skew_ms: int = 0  # its clock minus ours, smoothed (PONG carries its wall clock)
    skew_warned: bool = False


# ---------------------------------------------------------------- link decisions


@dataclass(frozen=True)
class Timing:
    ping_interval_ms: float
    ping_timeout_ms: float
    node_timeout_ms: float


def confirmed(peer: Peer, now_ms: int, t: Timing) -> bool:
    """Both directions confirmed recently: our PONG is fresh and the peer acks us."""
    return peer.peer_ack and peer.pong_ms > 0 and \
        now_ms - peer.pong_ms <= t.ping_interval_ms + t.ping_timeout_ms


def silent(peer: Peer, now_ms: int, t: Timing) -> bool:
    return now_ms - peer.last_rx_ms > t.ping_timeout_ms


def next_link_state(peer: Peer, connected: bool, now_ms: int, t: Timing,
                    probers: int) -> Link:
    """The direct link state this peer should be in now.

    connected: an authenticated connection exists. probers: how many other nodes we can
    ask to probe it (Up links other than this one)."""
    if not peer.enabled or peer.left:
        return Link.DOWN
    if connected and not silent(peer, now_ms, t):
        return Link.UP if confirmed(peer, now_ms, t) else Link.PROBE
    # Silent or disconnected: Up or Probe peers are probed before being declared Down.
    if peer.link == Link.DOWN:
        return Link.DOWN
    if peer.probing_since_ms == 0:
        return Link.PROBE  # the caller starts the probes now
    if peer.probe_alive:
        # Someone else hears it: keep our link in Probe (the caller repeats the round
        # every ping_timeout, in case that answer raced with the node's death), but not
        # past node_timeout.
        if now_ms - peer.probing_since_ms > t.node_timeout_ms:
            return Link.DOWN
        return Link.PROBE
    everyone_answered = probers > 0 and len(peer.probe_answers) >= probers
    if everyone_answered or now_ms - peer.probe_round_ms >= t.ping_timeout_ms:
        return Link.DOWN
    return Link.PROBE


def probe_round_due(peer: Peer, now_ms: int, t: Timing) -> bool:
    """Start (or repeat) a round of indirect probes now?"""
    if peer.probing_since_ms == 0:
        return True
    return peer.probe_alive and now_ms - peer.probe_round_ms >= t.ping_timeout_ms


def needs_ping(peer: Peer, now_ms: int, t: Timing) -> bool:
    """Ping an idle link (any traffic counts), and a link that is not confirmed yet."""
    if peer.ping_sent_ms and now_ms - peer.ping_sent_ms < t.ping_timeout_ms:
        return False
    if peer.link != Link.UP:
        return True
    return now_ms - max(peer.last_tx_ms, peer.ping_sent_ms) >= t.ping_interval_ms or \
        now_ms - peer.pong_ms >= t.ping_interval_ms


# ---------------------------------------------------------------- routing


def routes(me: int, my_up: set[int], adverts: dict[int, set[int]],
           members: set[int]) -> dict[int, int]:
    """Shortest-path next hop to every reachable member (breadth-first; ties go to the
    lowest node id at each step, so every node computes the same paths).

    my_up: our Up direct links. adverts: node -> its Up neighbours (its latest LSA). An
    edge a-b between two other nodes counts only if both advertise it.
    """
    def neighbours(node: int) -> list[int]:
        if node == me:
            return sorted(n for n in my_up if n in members)
        return sorted(n for n in adverts.get(node, set())
                      if n in members and n != me and node in adverts.get(n, set()))

    hop: dict[int, int] = {}
    seen = {me}
    queue: deque[int] = deque()
    for n in neighbours(me):
        seen.add(n)
        hop[n] = n
        queue.append(n)
    while queue:
        node = queue.popleft()
        for n in neighbours(node):
            if n not in seen:
                seen.add(n)
                hop[n] = hop[node]
                queue.append(n)
    return hop


# ---------------------------------------------------------------- floods


class FloodFilter:
    """Remembers the highest sequence seen per origin, so a flooded message is handled
    and forwarded once. Sequences come from `sequence_now` and grow across restarts."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}

    def fresh(self, kind: int, origin: int, seq: int) -> bool:
        key = (kind, origin)
        if seq <= self.seen.get(key, -1):
            return False
        self.seen[key] = seq
        return True

    def forget(self, origin: int) -> None:
        for key in [k for k in self.seen if k[1] == origin]:
            del self.seen[key]


class Sequencer:
    """Sequence numbers that keep growing across restarts: wall-clock ms << 20, bumped
    past the last one issued."""

    def __init__(self) -> None:
        self.last = 0

    def next(self, now_ms: int) -> int:
        self.last = max(self.last + 1, now_ms << 20)
        return self.last
