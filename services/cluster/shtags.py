"""Sharing tags: named roles (a virtual IP, say) of a cluster, each active on at most one
node at a time, and their automatic takeover.

A node declares the tags it can hold (`[clusterer] sharing_tags = vip1=active,
vip2=backup`: `active` is a preference, not a claim) and keeps, per tag, the newest
*activation* it knows: (epoch, holder). Nodes exchange their declarations and
activations (SHTAGS) on every change, when a node comes up, and every REFRESH_S; the
newer activation wins everywhere (`newer`: the higher epoch, then the lower node id).
Who acts is decided by `decide`, a pure function of what this node sees:

- the holder acts while it sees a majority of the tag's declaring nodes (itself
  included); an active node cut off in a minority steps down (auto mode);
- when the holder is down (or no node holds the tag), the Up declaring nodes choose
  one (`choose`: those preferring it first, then a rendezvous hash of tag and node, so
  several tags spread), and that node activates the tag with the epoch above the one
  it knew -- only on a side of a partition that sees a majority of the declaring nodes
  (two sides can never both have one), and only once it heard every Up declaring
  node's tags since it came up (a stale view never elects), and, in its first
  seed_fallback_interval_s, not for a holder it never saw Up (a node joining hears of
  the holder through another node before its own link to it is up);
- a returning former holder hears the higher epoch and stays backup.

The declaring nodes of each tag are kept in the data directory (shtags.json), so a node
restarting alone does not take itself for a majority of one. In manual mode tags only
change by clusterer_shtag_set_active, as in OpenSIPS. The states are published to shared
memory (shm.shtags) for the workers and the timer, and every change is logged, counted
and handed to subscribers (the script's on_shtag_change). Neighbours:
services.cluster.node (routing, events), api (the front), shm.shtags.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastcluster.core.messages import Msg, Shtags
from fastcluster.services.cluster.dispatch import Delivery, Mode
from fastcluster.services.cluster.membership import valid_id
from fastcluster.shm.shtags import MAX_TAG_NAME, MAX_TAGS, ShtagStates, TagState

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("shtags")

TICK_S = 0.1  # decisions are also taken at once on every node event and message
REFRESH_S = 1.0  # every node repeats its tags this often (a heal converges within it)

ShtagEvent = Callable[[str, int, bool, str], None]  # (tag, cluster, active here, reason)


# ---------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class Activation:
    """The newest activation of a tag a node knows: epoch, holder (0: none)."""
    epoch: int = 0
    holder: int = 0


NOBODY = Activation()


def newer(a: Activation, b: Activation) -> bool:
    """Whether activation a wins over b: the higher epoch; at equal epochs (two nodes
    that activated at once) the lower holder id, any holder over none."""
    if a.epoch != b.epoch:
        return a.epoch > b.epoch
    if not a.holder or not b.holder:
        return bool(a.holder) and not b.holder
    return a.holder < b.holder


def majority(declared: frozenset[int], up: frozenset[int]) -> bool:
    """Whether the nodes in sight (`up`, this node included) are a strict majority of
    the nodes declaring the tag."""
    return 2 * len(declared & up) > len(declared)


def _weight(tag: str, node: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{tag}\0{node}".encode(), digest_size=8).digest(),
                          "big")


def choose(tag: str, candidates: frozenset[int], preferred: frozenset[int]) -> int:
    """The node that takes a tag over, the same on every node with the same view: one
    declaring it `active` if any, then the highest rendezvous weight (tags spread over
    the nodes, and only the tags of a node that went away move)."""
    return max(candidates, key=lambda n: (n in preferred, _weight(tag, n)))


@dataclass(frozen=True)
class TagView:
    """What one node sees of one tag."""
    me: int
    declared: frozenset[int]  # nodes declaring the tag (this one if it does)
    preferred: frozenset[int]  # those declaring it `active`
    up: frozenset[int]  # nodes in sight, this one included
    settled: bool  # it heard every Up declaring node's tags since they came up
    current: Activation  # the newest activation it knows
    auto: bool  # clusterer.shtag_takeover = auto


@dataclass(frozen=True)
class Decision:
    active: bool  # this node acts for the tag now
    activate: Activation | None  # a new activation this node makes, to announce
    reason: str


def decide(tag: str, v: TagView) -> Decision:
    """Whether this node acts for a tag, and whether it takes it over now."""
    holder = v.current.holder
    if not v.auto:
        return Decision(holder == v.me, None, "set by MI" if holder == v.me else
                        f"active on node {holder}" if holder else "no node holds it")
    if v.me not in v.declared:
        return Decision(False, None, "not declared here")
    quorum = majority(v.declared, v.up)
    if holder == v.me:
        return Decision(quorum, None, "holder" if quorum else
                        "no majority of the nodes declaring it in sight")
    if holder and holder in v.up and holder in v.declared:
        return Decision(False, None, f"active on node {holder}")
    if not quorum:
        return Decision(False, None, "no majority of the nodes declaring it in sight")
    if not v.settled:
        return Decision(False, None, "waiting for the other nodes' tags")
    chosen = choose(tag, v.declared & v.up, v.preferred)
    if chosen != v.me:
        return Decision(False, None, f"node {chosen} takes it")
    why = f"node {holder} is down" if holder else "no node held it"
    return Decision(True, Activation(v.current.epoch + 1, v.me), why)


# ---------------------------------------------------------------- the service


@dataclass
class Tag:
    name: str
    cluster: int
    declared: dict[int, bool]  # node -> prefers active
    current: Activation = NOBODY
    active: bool = False  # acting here
    reason: str = ""  # why it is in that state
    note: str = ""  # why the next change happens, when decide() cannot tell (MI, takeover)
    changed_ms: int = 0


class SharingTags:
    def __init__(self, node: ClusterNode, states: ShtagStates) -> None:
        self.node = node
        self.me = node.me
        self.states = states
        cfg = node.cfg
        self.auto = cfg["clusterer.shtag_takeover"] == "auto"
        self.mine = {(name, cluster): state == "active"
                     for name, cluster, state in cfg.sharing_tags()}
        if len(self.mine) > MAX_TAGS:
            raise ValueError(f"more than {MAX_TAGS} sharing tags")
        self.tags: dict[tuple[str, int], Tag] = {}
        self.heard: set[tuple[int, int]] = set()  # (cluster, node) heard since it came up
        self.seen_up: set[tuple[int, int]] = set()  # (cluster, node) seen Up since the start
        self.contact = False  # heard any other node since the start
        self.started = time.monotonic()
        self.joining = bool(cfg["clusterer.seeds"] or cfg["clusterer.nodes"])
        self.grace_s = cfg["clusterer.seed_fallback_interval_s"]
        self.subscribers: list[ShtagEvent] = []
        self.path = os.path.join(cfg.data_dir, "shtags.json")
        self._load()
        for (name, cluster), pref in self.mine.items():
            t = self.tag(name, cluster)
            t.declared[self.me] = pref
            if pref and not self.auto:  # manual: the INI says who starts active (an
                t.current = Activation(1, self.me)  # older epoch than any MI change)
        node.dispatcher.register(Msg.SHTAGS, self.handle, Mode.INLINE)
        node.events.nodes.append(self.on_node)
        # only an operator's removal shrinks a tag's declaring nodes: forgetting a node
        # unseen for long would let a minority side of a long partition count itself a
        # majority and activate the tag a second time
        node.events.removals.append(self.forget)
        self.publish()

    def tag(self, name: str, cluster: int) -> Tag:
        t = self.tags.get((name, cluster))
        if t is None:
            t = self.tags[(name, cluster)] = Tag(name, cluster, {})
        return t

    # -- the declaring nodes, kept across restarts

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("node_id") != self.me:
                log.warning("%s belongs to node %s: ignored", self.path, data.get("node_id"))
                return
            for key, nodes in data.get("tags", {}).items():
                name, _, cluster = key.rpartition("/")
                t = self.tag(name, int(cluster))
                for node, pref in nodes.items():
                    if valid_id(int(node)) and int(node) != self.me:
                        t.declared[int(node)] = bool(pref)
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("%s unreadable (%s): the tags' other nodes are learnt again",
                        self.path, exc)

    def _save(self) -> None:
        data = {"node_id": self.me, "tags": {
            f"{t.name}/{t.cluster}": {str(n): int(p) for n, p in t.declared.items()
                                      if n != self.me}
            for t in self.tags.values()}}
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    # -- messages

    def message(self, cluster: int, reason: str = "") -> Shtags:
        return Shtags(cluster, {n: int(p) for (n, c), p in self.mine.items() if c == cluster},
                      {t.name: [t.current.epoch, t.current.holder]
                       for t in self.tags.values() if t.cluster == cluster and
                       t.current.holder}, reason)

    def announce(self, reason: str = "") -> None:
        for cluster in self.node.clusters:
            self.node.routing.broadcast(cluster, Msg.SHTAGS, self.message(cluster, reason))

    def handle(self, d: Delivery) -> None:
        p: Shtags = d.payload
        src = d.source
        if not valid_id(src) or p.cluster not in self.node.clusters:
            self.node.count("clusterer:bad_messages")
            return
        self.heard.add((p.cluster, src))
        self.contact = True
        changed = False
        for t in [t for t in self.tags.values() if t.cluster == p.cluster]:
            if src in t.declared and t.name not in p.declared:
                del t.declared[src]  # it no longer declares the tag
                changed = True
        for name, pref in p.declared.items():
            if len(name.encode()) > MAX_TAG_NAME:
                self.node.count("clusterer:bad_messages")
                continue
            t = self.tag(name, p.cluster)
            if t.declared.get(src) != bool(pref):
                t.declared[src] = bool(pref)
                changed = True
        for name, (epoch, holder) in ((n, (list(v) + [0, 0])[:2]) for n, v in p.known.items()):
            if len(name.encode()) > MAX_TAG_NAME or not valid_id(holder):
                continue
            t = self.tag(name, p.cluster)
            seen = Activation(epoch, holder)
            if newer(seen, t.current):
                t.current = seen
                t.note = f"node {holder} took it (epoch {epoch})"
        if changed:
            self._save()
        self.evaluate()

    # -- events

    def on_node(self, cluster: int, node: int, up: bool) -> None:
        if up:  # it must hear ours (and we wait for its) before anyone elects
            self.node.routing.send(cluster, node, Msg.SHTAGS, self.message(cluster))
        else:
            self.heard.discard((cluster, node))
        self.evaluate()

    def forget(self, node: int) -> None:
        for t in self.tags.values():
            t.declared.pop(node, None)
        self._save()
        self.evaluate()

    def subscribe(self, fn: ShtagEvent) -> None:
        self.subscribers.append(fn)

    # -- decisions

    def view(self, t: Tag) -> TagView:
        up = frozenset(self.node.routing.up_nodes(t.cluster)) | {self.me}
        declared = frozenset(t.declared)
        self.seen_up |= {(t.cluster, n) for n in up}
        holder = t.current.holder
        # the holder counts among the nodes to hear from: an activation learnt through a
        # third node, before the holder's own declaration, must not make it look like a
        # holder that no longer declares the tag
        settled = all((t.cluster, n) in self.heard for n in (declared | {holder}) & up
                      if n != self.me)
        young = time.monotonic() - self.started < self.grace_s
        if self.joining and not self.contact and young:
            settled = False  # a joining node first meets the cluster
        if young and holder and holder not in up and (t.cluster, holder) not in self.seen_up:
            # a holder this node never saw Up since it started may just not be linked
            # yet (it heard of it through another node): it is not "down" before the
            # grace is over (a node that joined takes nothing from a live holder)
            settled = False
        return TagView(self.me, declared, frozenset(n for n, p in t.declared.items() if p),
                       up, settled, t.current, self.auto)

    def evaluate(self) -> None:
        announce = ""
        changed = False
        for t in self.tags.values():
            d = decide(t.name, self.view(t))
            if d.activate is not None:
                if t.current.holder:  # not the first activation of a tag nobody held
                    self.node.count("clusterer:shtag_takeovers")
                t.current = d.activate
                announce = t.note = f"took {t.name} over (epoch {t.current.epoch}): " \
                                    f"{d.reason}"
            changed |= self._set(t, d.active, t.note if t.note and d.active == (
                t.current.holder == self.me) else d.reason)
            t.note = ""
        if announce:
            self.announce(announce)
        if changed or announce:
            self.publish()

    def _set(self, t: Tag, active: bool, reason: str) -> bool:
        if active == t.active:
            return False
        t.active, t.reason = active, reason
        t.changed_ms = int(time.time() * 1000)
        state = "active" if active else "backup"
        log.info("sharing tag %s/%d is %s here (epoch %d, holder %d): %s", t.name, t.cluster,
                 state, t.current.epoch, t.current.holder, reason)
        self.node.count("clusterer:shtag_changes")
        for fn in self.subscribers:
            try:
                fn(t.name, t.cluster, active, reason)
            except Exception:
                log.exception("sharing tag subscriber %r failed", fn)
        return True

    def set_active(self, name: str, cluster: int) -> str | None:
        """clusterer_shtag_set_active: take the tag here with a higher epoch (the others
        step down when they hear it). The reason it is refused, or None."""
        t = self.tags.get((name, cluster))
        if t is None or (self.auto and self.me not in t.declared):
            return f"sharing tag {name}/{cluster} is not declared on this node"
        v = self.view(t)
        if self.auto and not majority(v.declared, v.up):
            return (f"sharing tag {name}/{cluster}: this node sees no majority of the "
                    f"nodes declaring it ({sorted(v.declared)}), it would step down at once")
        t.current = Activation(t.current.epoch + 1, self.me)
        t.note = f"set active by MI (epoch {t.current.epoch})"
        self.announce(f"{name} set active by MI")
        self.evaluate()
        self.publish()
        return None

    def publish(self) -> None:
        self.states.publish([TagState(t.name, t.cluster, t.active, t.current.holder,
                                      t.current.epoch, t.changed_ms)
                             for t in sorted(self.tags.values(),
                                             key=lambda x: (x.cluster, x.name))][:MAX_TAGS])

    def listing(self) -> list[dict[str, Any]]:
        """clusterer_list_shtags: OpenSIPS's Tag/Cluster/State, and what decides them."""
        out = []
        for t in sorted(self.tags.values(), key=lambda x: (x.cluster, x.name)):
            v = self.view(t)
            out.append({"Tag": t.name, "Cluster": t.cluster,
                        "State": "active" if t.active else "backup",
                        "Epoch": t.current.epoch, "Holder": t.current.holder,
                        "Declared_by": sorted(t.declared), "Majority": majority(
                            v.declared, v.up), "Reason": t.reason})
        return out

    async def run(self) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.evaluate()
                now = time.monotonic()
                if now - last >= REFRESH_S:
                    last = now
                    self.announce()
            except Exception:
                log.exception("sharing tags: evaluation failed")
