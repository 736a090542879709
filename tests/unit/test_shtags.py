"""Sharing tag decisions (services.cluster.shtags): who activates a tag, given what each
node sees, with tables of cases; and, over every way to split a cluster in two, that no
two sides both act for a tag and that a heal leaves exactly one holder."""
from __future__ import annotations

import itertools

import pytest

from fastcluster.services.cluster.shtags import (
    NOBODY,
    Activation,
    TagView,
    choose,
    decide,
    majority,
    newer,
)


@pytest.mark.parametrize("a, b, wins", [
    (Activation(2, 3), Activation(1, 1), True),  # higher epoch
    (Activation(1, 1), Activation(2, 3), False),
    (Activation(2, 1), Activation(2, 3), True),  # same epoch: the lower node id
    (Activation(2, 3), Activation(2, 1), False),
    (Activation(2, 3), Activation(2, 3), False),  # the same one is not newer
    (Activation(1, 2), NOBODY, True),
    (NOBODY, Activation(1, 2), False),
    (Activation(0, 2), NOBODY, True),  # a holder over none at equal epochs
])
def test_newer(a, b, wins) -> None:
    assert newer(a, b) is wins


@pytest.mark.parametrize("declared, up, has", [
    ({1, 2, 3}, {1, 2, 3}, True),
    ({1, 2, 3}, {1, 2}, True),
    ({1, 2, 3}, {3}, False),
    ({1, 2}, {1}, False),  # half is not a majority: two nodes alone never take over
    ({1, 2, 3, 4}, {1, 2}, False),
    ({1, 2, 3, 4}, {1, 2, 3}, True),
    ({1}, {1}, True),
    ({1, 2, 3}, {1, 4, 5}, False),  # nodes not declaring the tag do not count
])
def test_majority(declared, up, has) -> None:
    assert majority(frozenset(declared), frozenset(up)) is has


def test_choose_prefers_declared_active_then_is_the_same_everywhere() -> None:
    assert choose("vip1", frozenset({1, 2, 3}), frozenset({2})) == 2
    picks = {choose("vip1", frozenset({1, 2, 3}), frozenset()) for _ in range(5)}
    assert len(picks) == 1
    # several tags spread over the nodes (rendezvous), and a node's leaving moves only
    # the tags it was chosen for
    tags = [f"vip{i}" for i in range(60)]
    chosen = {t: choose(t, frozenset({1, 2, 3}), frozenset()) for t in tags}
    assert set(chosen.values()) == {1, 2, 3}
    after = {t: choose(t, frozenset({1, 2}), frozenset()) for t in tags}
    assert all(after[t] == chosen[t] for t in tags if chosen[t] != 3)


def view(me=2, declared=(1, 2, 3), preferred=(), up=(1, 2, 3), settled=True,
         current=Activation(1, 1), auto=True) -> TagView:
    return TagView(me, frozenset(declared), frozenset(preferred), frozenset(up), settled,
                   current, auto)


@pytest.mark.parametrize("v, active, activate, why", [
    (view(), False, None, "active on node 1"),
    (view(me=1), True, None, "holder"),
    # the holder cut off in a minority steps down
    (view(me=1, up=(1,)), False, None, "no majority"),
    # the holder is down: the majority side elects one, the chosen takes it
    (view(me=2, up=(2, 3), preferred=(2,)), True, Activation(2, 2), "node 1 is down"),
    (view(me=3, up=(2, 3), preferred=(2,)), False, None, "node 2 takes it"),
    # ... only once it heard every Up declaring node
    (view(me=2, up=(2, 3), preferred=(2,), settled=False), False, None, "waiting"),
    # ... and never on a minority side
    (view(me=3, up=(3,)), False, None, "no majority"),
    # nobody holds it: the preferred node takes it at the start
    (view(me=1, preferred=(1,), current=NOBODY), True, Activation(1, 1), "no node held it"),
    (view(me=2, preferred=(1,), current=NOBODY), False, None, "node 1 takes it"),
    # a node alone that declares the tag alone holds it
    (view(me=1, declared=(1,), up=(1,), current=NOBODY), True, Activation(1, 1),
     "no node held"),
    # a node that does not declare the tag never holds it
    (view(me=4, declared=(1, 2, 3), up=(2, 3, 4), current=NOBODY), False, None,
     "not declared"),
    # a holder that no longer declares the tag is as good as gone
    (view(me=2, declared=(2, 3), up=(1, 2, 3), preferred=(2,)), True, Activation(2, 2),
     "node 1 is down"),
    # ... unless its declaration was not heard yet (the activation came through a third
    # node first): the service does not call that settled
    (view(me=2, declared=(2, 3), up=(1, 2, 3), preferred=(2,), settled=False), False,
     None, "waiting"),
    # manual mode: the holder acts, nobody takes over, majority or not
    (view(me=1, up=(1,), auto=False), True, None, "set by MI"),
    (view(me=2, up=(2, 3), auto=False), False, None, "active on node 1"),
    (view(me=2, up=(2, 3), auto=False, current=NOBODY), False, None, "no node holds"),
])
def test_decide(v, active, activate, why) -> None:
    d = decide("vip1", v)
    assert (d.active, d.activate) == (active, activate)
    assert why in d.reason


def run_side(side: frozenset[int], declared: frozenset[int], current: Activation,
             preferred: frozenset[int]) -> tuple[Activation, set[int]]:
    """Every node of one side decides, with the view of its side, until nothing changes
    (activations are broadcast within the side); returns (the side's newest activation,
    the nodes acting)."""
    known = {n: current for n in side}
    for _ in range(5):
        for n in sorted(side):
            d = decide("t", TagView(n, declared, preferred, side, True, known[n], True))
            if d.activate is not None:
                for m in side:
                    if newer(d.activate, known[m]):
                        known[m] = d.activate
    acting = {n for n in side if decide("t", TagView(n, declared, preferred, side, True,
                                                      known[n], True)).active}
    best = max(known.values(), key=lambda a: (a.epoch, -a.holder))
    return best, acting


@pytest.mark.parametrize("size", [3, 4, 5])
def test_no_split_ever_has_two_active_sides_and_a_heal_keeps_one(size) -> None:
    nodes = frozenset(range(1, size + 1))
    for holder in nodes | {0}:  # 0: nobody held it before the split
        for k in range(0, size + 1):
            for left in map(frozenset, itertools.combinations(sorted(nodes), k)):
                right = nodes - left
                current = Activation(3, holder) if holder else NOBODY
                results = [run_side(side, nodes, current, frozenset({1}))
                           for side in (left, right) if side]
                acting = [a for _, a in results]
                assert sum(1 for a in acting if a) <= 1, (holder, left, right)
                assert all(len(a) <= 1 for a in acting)
                # heal: every node learns every activation; the newest wins everywhere
                best = current
                for b, _ in results:
                    if newer(b, best):
                        best = b
                _, healed = run_side(nodes, nodes, best, frozenset({1}))
                assert len(healed) == 1, (holder, left, right, best)


def test_a_returning_former_holder_steps_down() -> None:
    # node 1 held epoch 3; cut off, it stepped down; the others elected node 2 (epoch 4)
    d = decide("t", view(me=1, up=(1, 2, 3), current=Activation(4, 2)))
    assert not d.active and d.activate is None
    # it restarts knowing nothing, hears nobody yet: it does not elect itself
    d = decide("t", view(me=1, up=(1,), current=NOBODY, preferred=(1,)))
    assert not d.active
    # it hears the others: the holder is up, it stays backup
    d = decide("t", view(me=1, up=(1, 2, 3), current=Activation(4, 2), preferred=(1,)))
    assert not d.active and d.activate is None
