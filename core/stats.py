"""Statistics declared once: every counter a process increments, every gauge the MI
computes, and the labelled metrics of the cluster, by group and name.

Each process owns one row of counters in the control segment (single writer, no atomics);
the MI sums the rows. Gauges (registered contacts, ...) are computed from the tables by
the MI, not stored here. Names follow OpenSIPS where OpenSIPS has them (core, sl,
registrar, usrloc groups). `get_statistics`, the Prometheus exposition (`GET /metrics`,
names from `metric_name`, help from the description) and docs/statistics.md
(`render_statistics_doc`) all derive from these tuples. Neighbours: shm.control
(storage), services.mi (get_statistics, metrics).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("core", "rcv_requests", "SIP requests received"),
    ("core", "sip_tables_mapped", "SIP worker starts that finished mapping every page of "
     "the tables into the worker (in the background after it starts serving; until "
     "then a request may pay for a page's first touch)"),
    ("core", "rcv_replies", "SIP replies received (dropped: no proxy yet, or ping replies)"),
    ("core", "bad_msgs", "datagrams that did not parse as SIP (answered 400 or dropped)"),
    ("core", "drop_requests", "requests dropped without an answer"),
    ("core", "unsupported_methods", "requests to this node answered 501: unknown method"),
    ("core", "method_not_allowed", "requests to this node answered 405: known, not served"),
    ("core", "no_transaction", "CANCEL/BYE to this node answered 481: nothing to match"),
    ("core", "too_many_hops", "requests answered 483 (Max-Forwards: 0)"),
    ("core", "unsupported_uri_scheme", "requests answered 416: Request-URI not sip/sips"),
    ("core", "bad_request_uri", "requests answered 400: malformed Request-URI"),
    ("core", "bad_extensions", "requests answered 420: Require of an unsupported extension"),
    ("core", "bad_via", "requests answered 400: malformed top Via or Via parameter"),
    ("core", "fwd_requests", "requests forwarded statelessly (ACK for 2xx, no transaction)"),
    ("core", "fwd_replies", "replies forwarded statelessly (no transaction matched)"),
    ("core", "drop_replies", "replies dropped: not for us (top Via), or nowhere to send"),
    ("core", "err_replies", "replies that did not parse (dropped)"),
    *(("core", f"rcv_requests_{m}", f"{m.upper()} requests received")
      for m in ("invite", "ack", "bye", "cancel", "options", "register", "message",
                "subscribe", "notify", "info", "update", "prack", "refer", "publish")),
    *(("core", f"rcv_replies_{c}xx", f"{c}xx replies received") for c in range(1, 7)),
    ("sl", "1xx_replies", "1xx replies sent"),
    ("sl", "2xx_replies", "2xx replies sent"),
    ("sl", "3xx_replies", "3xx replies sent"),
    ("sl", "4xx_replies", "4xx replies sent"),
    ("sl", "5xx_replies", "5xx replies sent"),
    ("sl", "6xx_replies", "6xx replies sent"),
    ("sl", "sent_replies", "replies sent"),
    ("registrar", "accepted_regs", "REGISTER requests answered 200"),
    ("registrar", "rejected_regs", "REGISTER requests refused"),
    ("registrar", "refused_not_synced", "wildcard unregistrations answered 503: this node's "
                                        "contacts were not synced yet (it cannot know every "
                                        "binding to remove)"),
    ("registrar", "foreign_domain", "REGISTERs refused: domain not in sip.domains (403/404)"),
    ("registrar", "bad_aor", "REGISTERs refused: To is not a SIP AOR (416) or malformed (400)"),
    ("registrar", "outbound_first_hop", "REGISTERs refused 439: reg-id through a first hop "
                                        "without outbound"),
    ("auth", "accepted", "requests whose digest answer was accepted"),
    ("auth", "challenges", "401 challenges to requests without credentials for the realm"),
    ("auth", "bad_nonces", "401: a nonce no node sharing our key issued (forged, garbled)"),
    ("auth", "stale_nonces", "401 stale=true: right password, expired nonce"),
    ("auth", "replayed_nonces", "401 stale=true: nonce count already used, and not by a "
                                "retransmission of an applied REGISTER"),
    ("auth", "retransmissions", "answers with a used nonce count that retransmit an "
                                "applied REGISTER: answered again, nothing changed"),
    ("auth", "nonce_table_full", "401 stale=true: the replay table had no room for the nonce"),
    ("auth", "failed", "401: wrong password or unknown user, retries left"),
    ("auth", "forbidden", "403: wrong again after auth.max_failures retries"),
    ("auth", "identity_mismatch", "403: authenticated as another user than the To AOR"),
    ("auth", "bad_credentials", "400: a Digest answer missing fields or using what was not "
                                "offered"),
    ("auth", "unknown_users", "answers for users not in the subscriber database"),
    ("auth", "db_lookups", "subscriber lookups that read SQLite (worker cache misses)"),
    ("auth", "db_errors", "subscriber database errors (answered 500)"),
    ("usrloc", "refused_too_long", "contacts refused: strings wider than usrloc.record_bytes"),
    ("usrloc", "refused_table_full", "contacts refused: the contact table is full"),
    ("usrloc", "key_collisions", "bindings refused: 64-bit key collision with another binding"),
    ("usrloc", "lock_waits", "table operations that found their lock busy and yielded"),
    ("usrloc", "expired_contacts", "contacts expired by the timer"),
    ("usrloc", "purged_tombstones", "tombstones purged by the timer"),
    ("mi", "unauthorized", "MI requests refused: missing or wrong access token (HTTP 401)"),
    ("tm", "UAS_transactions", "server transactions created (requests proxied statefully)"),
    ("tm", "UAC_transactions", "client transactions started (branches sent)"),
    ("tm", "received_replies", "replies that matched a transaction"),
    ("tm", "relayed_replies", "replies forwarded upstream by a transaction"),
    ("tm", "local_replies", "final replies a transaction made itself (408, 487, 500...)"),
    *(("tm", f"{c}xx_transactions", f"transactions answered upstream with a {c}xx")
      for c in range(2, 7)),
    ("tm", "retransmissions", "requests, CANCELs and final replies sent again by timers"),
    ("tm", "absorbed_retransmissions", "request retransmissions answered by a transaction"),
    ("tm", "refused_table_full", "requests refused 503: the transaction table is full"),
    ("tm", "refused_too_long", "requests refused 513: wider than proxy.record_bytes"),
    ("tm", "key_collisions", "requests refused 500: 64-bit transaction key collision"),
    ("tm", "lock_waits", "transaction operations that found their lock busy and yielded"),
    ("tm", "timer_rearmed", "transactions whose timer entry went missing, re-armed by sweep"),
    ("tm", "expired_rows", "transaction rows freed by the safety expiry (timers lost)"),
    ("proxy", "lookups", "location lookups of a served AOR"),
    ("proxy", "not_found", "requests answered 404: the AOR has never registered"),
    ("proxy", "no_contacts", "requests answered 480: the AOR has no live contact"),
    ("proxy", "home_routed", "branches routed through the node the contact registered on"),
    ("proxy", "relayed_foreign", "requests relayed to a domain this node does not serve"),
    ("proxy", "refused_foreign", "requests refused 403: domain not served, relaying off"),
    ("proxy", "loops", "requests answered 482: a loop through this node"),
    ("proxy", "unroutable", "requests answered 4xx/5xx: no usable destination"),
    ("dialog", "processed_dialogs", "dialogs created (initial INVITEs tracked)"),
    ("dialog", "expired_dialogs", "dialogs ended at their lifetime (BYEs sent), or dropped "
                                  "unconfirmed after Timer C"),
    ("dialog", "failed_dialogs", "dialogs that never got a 2xx (rejected, cancelled, "
                                 "timed out)"),
    ("dialog", "terminated_dialogs", "confirmed dialogs ended by a BYE through the proxy"),
    ("dialog", "ended_by_mi", "dialogs ended by dlg_end_dlg (BYEs sent)"),
    ("dialog", "ended_by_ping", "dialogs ended because a leg did not answer its "
                                "in-dialog ping, or answered 481"),
    ("dialog", "byes_sent", "BYEs this node sent itself (lifetime, dlg_end_dlg, pings)"),
    ("dialog", "pings_sent", "in-dialog OPTIONS pings sent"),
    ("dialog", "ping_replies", "replies to in-dialog pings"),
    ("dialog", "own_replies", "replies to the BYEs this node sent itself"),
    ("dialog", "refused", "INVITEs answered 500/503: their dialog could not be stored "
                          "(table full, strings wider than dialog.record_bytes)"),
    ("dialog", "profile_refused", "INVITEs answered 403 Too Many Calls (dialog.profile_limits)"),
    ("dialog", "callee_too_long", "responses to an INVITE whose callee side (To tag, Contact, "
                                  "route set) did not fit dialog.record_bytes: a 1xx leaves "
                                  "the dialog as it was, a 2xx ends its tracking (the call "
                                  "goes on untracked)"),
    ("dialog", "profile_values_refused", "profile values not counted: the counters are full "
                                         "(dialog.profile_values) or the value is too long "
                                         "(an INVITE in a profile with a limit is then "
                                         "refused 503/500, counted in dialog:refused too)"),
    ("dialog", "taken_over_requests", "in-dialog requests routed for a dead node of the "
                                      "cluster from the replicated dialog"),
    ("dialog", "lock_waits", "dialog operations that found their lock busy and yielded"),
    ("clusterer", "shtag_changes", "times a sharing tag became active or backup here"),
    ("clusterer", "shtag_takeovers", "sharing tags this node took over automatically "
                                   "from a node that went down (not a first activation)"),
    ("clusterer", "refused_links", "connections refused (bad secret, duplicate id, ...)"),
    ("clusterer", "corrupt_frames", "connections dropped for a frame that did not decode"),
    ("clusterer", "bad_messages", "well-framed messages whose content made no sense"),
    ("clusterer", "relayed_msgs", "messages forwarded for other nodes"),
    ("clusterer", "unroutable_msgs", "messages dropped: no path to their destination"),
    ("clusterer", "node_up_events", "nodes that became reachable"),
    ("clusterer", "node_down_events", "nodes that became unreachable"),
    ("clusterer", "repl_rows_sent", "rows sent by realtime replication (per destination)"),
    ("clusterer", "repl_rows_applied", "replicated rows applied here"),
    ("clusterer", "repl_rows_stale", "replicated rows older than what this node has"),
    ("clusterer", "repl_rows_refused", "replicated rows refused: table full or too long"),
    ("clusterer", "repl_gaps", "times a replication ring was full (repaired from the table)"),
    ("clusterer", "repl_gaps_seen", "gaps in a realtime stream from another node (reported "
                                    "to it at once: it re-sends)"),
    ("clusterer", "repl_resends", "re-sends of this node's changes to a node that did not "
                                  "acknowledge them in time"),
    ("clusterer", "ae_ranges_repaired", "anti-entropy: ranges found different from another "
                                        "node's and exchanged"),
    ("clusterer", "ae_rows_applied", "anti-entropy: rows received that changed this node's "
                                     "tables"),
    ("clusterer", "handler_errors", "messages whose handler failed here (a bug of ours, "
                                    "logged with its traceback)"),
    ("clusterer", "dropped_msgs", "messages dropped: their handler's queue was full"),
    ("clusterer", "clock_skew_warnings", "times another node's clock was found off by more "
                                         "than clusterer.max_clock_skew_ms"),
    ("clusterer", "syncs_done", "full syncs completed as receiver"),
    ("clusterer", "mirror_dropped", "rows a mirror sync dropped (deleted in the cluster while "
                                    "this node was away longer than tombstone_max_s)"),
    ("clusterer", "syncs_donated", "full syncs served as donor"),
    ("clusterer", "sync_failed", "full syncs that failed (donor lost, timeout, mismatch)"),
    ("clusterer", "sync_corrupt_chunks", "sync chunks refused for a bad checksum or row"),
    ("persistence", "flushes", "flushes of changed rows to the database"),
    ("persistence", "rows_written", "rows written (inserted or updated) to the database"),
    ("persistence", "rows_loaded", "rows loaded from the database at start"),
    ("persistence", "failures", "flushes the database refused (everything is written again "
                                "at the next one that works)"),
    ("persistence", "snapshots", "snapshots written (each compacts a table's log)"),
    ("nathelper", "pings_sent", "NAT pings sent by this node"),
    ("nathelper", "ping_replies", "replies to this node's OPTIONS pings"),
    ("nathelper", "ping_cycles", "complete sweeps of the contact table"),
    ("nathelper", "ticks_overrun", "timer ticks whose pinging took longer than the tick"),
    ("nathelper", "contacts_removed", "contacts removed after usrloc.max_pings_lost misses"),
    ("nathelper", "unreachable", "contacts not pinged: no address to send to"),
    ("nathelper", "send_errors", "pings the socket refused to send"),
    ("nathelper", "pings_as_home", "NAT pings of contacts registered through this node in "
     "other nodes' partitions (a NAT lets only the node it registered through in)"),
    ("script", "requests_sent", "requests the script sent (per destination node)"),
    ("script", "replies_sent", "replies the script sent"),
    ("script", "requests_received", "requests delivered to the script's on_request"),
    ("script", "replies_received", "replies delivered to the script (hook or waiter)"),
    ("script", "refused_msgs", "messages the API refused (too large, not msgpack-able)"),
    ("script", "hook_errors", "hook calls that raised (logged with their traceback)"),
    ("script", "hooks_abandoned", "hook calls still running after script.hook_timeout_s"),
    ("script", "dropped_msgs", "messages for the script dropped: not connected, or "
                               "script.queue_bytes waiting already"),
)

# OpenSIPS names for the same figures (usrloc exports these), accepted wherever a
# statistic is named: alias -> our name.
ALIASES: dict[str, str] = {
    "usrloc:registered_users": "usrloc:registered_aors",
    "usrloc:location-users": "usrloc:registered_aors",
    "usrloc:location-contacts": "usrloc:registered_contacts",
    "usrloc:location-expires": "usrloc:expired_contacts",
}

INDEX: dict[str, int] = {f"{g}:{n}": i for i, (g, n, _) in enumerate(COUNTERS)}

# Gauges: figures read from the tables when asked (services.mi.core_cmds computes each
# one by name), never stored.
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("usrloc", "registered_contacts", "contacts registered now (live rows of the contact "
                                      "table)"),
    ("usrloc", "registered_aors", "AORs with at least one registered contact"),
    ("usrloc", "tombstones", "removed contacts kept as tombstones"),
    ("usrloc", "capacity", "contacts the shared table can hold (usrloc.capacity)"),
    ("dialog", "active_dialogs", "dialogs held now (live rows of the dialog table)"),
    ("dialog", "early_dialogs", "dialogs held now in the early state (a 1xx with a To tag, "
                                "no 2xx yet)"),
    ("dialog", "confirmed_dialogs", "dialogs held now confirmed and acknowledged (ACK seen)"),
    ("dialog", "tombstones", "ended dialogs kept as tombstones"),
    ("dialog", "capacity", "dialogs the shared table can hold (dialog.capacity)"),
    ("tm", "inuse_transactions", "transactions held now (server transactions in the table, "
                                 "lingering ones included)"),
    ("tm", "capacity", "transactions the shared table can hold (proxy.transactions)"),
)

METRIC_PREFIX = "fastcluster_"


def metric_name(stat: str) -> str:
    """The Prometheus name of a statistic: "usrloc:registered_contacts" ->
    "fastcluster_usrloc_registered_contacts" (counters get "_total" when exposed)."""
    return METRIC_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", stat.replace(":", "_"))


@dataclass(frozen=True)
class Metric:
    """A Prometheus metric with labels, beyond the flat statistics: what the cluster
    process knows about links, capabilities, syncs and replication."""
    name: str  # without METRIC_PREFIX; counters without "_total"
    kind: str  # gauge, counter, histogram
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 60.0)
_SYNC_S_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SYNC_ROWS_BUCKETS = (0.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)

METRICS: tuple[Metric, ...] = (
    Metric("build_info", "gauge", ("version",), "always 1; the version of this node"),
    Metric("process_heartbeat_age_seconds", "gauge", ("process",),
           "age of each process's last heartbeat (the master stops a child past "
           "core.child_timeout_s)"),
    Metric("node_up", "gauge", ("cluster", "node"),
           "1 while the node is reachable from this one, directly or through a relay"),
    Metric("node_next_hop", "gauge", ("cluster", "node"),
           "node through which messages to the node go (itself: a direct link; 0: none)"),
    Metric("link_state", "gauge", ("cluster", "node", "state"),
           "this node's direct link to the node: 1 for its state (Up, Probe, Down), 0 for "
           "the others"),
    Metric("link_rtt_seconds", "gauge", ("cluster", "node"),
           "round-trip time of the direct link, from its heartbeats"),
    Metric("link_clock_skew_seconds", "gauge", ("cluster", "node"),
           "how far the node's clock is ahead of this one's"),
    Metric("capability_state", "gauge", ("cluster", "capability", "node", "state"),
           "each node's state of each capability: 1 for its state (not synced, sync "
           "pending, sync in progress, synced), 0 for the others"),
    Metric("capability_enabled", "gauge", ("cluster", "capability", "node"),
           "1 while the node has the capability enabled"),
    Metric("sync_progress_ratio", "gauge", ("capability",),
           "share of the hash space received by the full sync under way here (absent: "
           "none under way)"),
    Metric("sync_records_received", "gauge", ("capability",),
           "rows received so far by the full sync under way here"),
    Metric("sync_duration_seconds", "histogram", ("capability",),
           "full syncs completed here as receiver: time from the first chunk request to "
           "synced (donor switches included)", _SYNC_S_BUCKETS),
    Metric("sync_records", "histogram", ("capability",),
           "full syncs completed here as receiver: rows received", _SYNC_ROWS_BUCKETS),
    Metric("replication_lag_seconds", "histogram", ("table",),
           "realtime batches applied here: age of the batch's oldest row (its version, "
           "the origin's clock: clock skew adds to it)", _LAG_BUCKETS),
    Metric("replication_ring_fill_ratio", "gauge", ("table",),
           "fullest replication ring of the table (one per process): bytes waiting for "
           "the cluster process over the ring's size"),
    Metric("replication_ring_pending_bytes", "gauge", ("table",),
           "bytes waiting in the table's replication rings"),
    Metric("replication_ring_rows_pushed", "counter", ("table",),
           "rows pushed into the table's replication rings since the node started"),
    Metric("replication_ring_rows_not_pushed", "counter", ("table",),
           "rows a full ring could not take (backpressure: re-sent from the table)"),
    Metric("replication_backlog_bytes", "gauge", ("cluster", "node"),
           "bytes queued on the link towards the node, not yet written"),
    Metric("natping_partitions", "gauge", (), "NAT ping partitions (usrloc.ping_partitions)"),
    Metric("natping_partitions_owned", "gauge", (),
           "NAT ping partitions this node pings"),
)


def render_statistics_doc() -> str:
    """docs/statistics.md, generated from the declarations above (a test fails when the
    file is stale)."""
    lines = [
        "# Statistics reference",
        "",
        "Generated from `core/stats.py` by `fastcluster statistics-doc`; do not edit.",
        "",
        "`fastcluster mi get_statistics [group: | group:name ...]` returns the statistics "
        "below as a flat `{\"group:name\": number}` object; `GET /metrics` on the MI "
        "server exposes the same figures to Prometheus under the names shown (counters "
        "with the `_total` suffix), then the labelled metrics of the last section. "
        "Counters are summed over the node's processes and grow until "
        "`reset_statistics` or a restart; gauges are read from the tables when asked.",
        "",
    ]
    groups = list(dict.fromkeys(g for g, _, _ in COUNTERS + GAUGES))
    for group in groups:
        lines += [f"## {group}", "", "| statistic | kind | Prometheus | meaning |",
                  "|---|---|---|---|"]
        for kind, table in (("counter", COUNTERS), ("gauge", GAUGES)):
            for g, name, doc in table:
                if g != group:
                    continue
                suffix = "_total" if kind == "counter" else ""
                lines.append(f"| `{g}:{name}` | {kind} | `{metric_name(f'{g}:{name}')}"
                             f"{suffix}` | {doc} |")
        lines.append("")
    lines += ["## OpenSIPS names", "",
              "Accepted wherever a statistic is named (not exposed twice to Prometheus):",
              "", "| alias | same as |", "|---|---|"]
    lines += [f"| `{alias}` | `{real}` |" for alias, real in ALIASES.items()]
    lines += ["", "## Cluster metrics (Prometheus only)", "",
              "| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        suffix = "_total" if m.kind == "counter" else ""
        labels = ", ".join(f"`{label}`" for label in m.labels)
        lines.append(f"| `{METRIC_PREFIX}{m.name}{suffix}` | {m.kind} | {labels} | {m.help} |")
    lines.append("")
    return "\n".join(lines)
