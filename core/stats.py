"""Statistics declared once: every counter a process increments, by group and name.

Each process owns one row of counters in the control segment (single writer, no atomics);
the MI sums the rows. Gauges (registered contacts, ...) are computed from the tables by
the MI, not stored here. Names follow OpenSIPS where OpenSIPS has them (core, sl,
registrar, usrloc groups). Neighbours: shm.control (storage), services.mi (get_statistics).
"""
from __future__ import annotations

COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("core", "rcv_requests", "SIP requests received"),
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
    ("dialog", "profile_values_refused", "profile values not counted: the counters are full "
                                         "(dialog.profile_values) or the value is too long"),
    ("dialog", "taken_over_requests", "in-dialog requests routed for a dead node of the "
                                      "cluster from the replicated dialog"),
    ("dialog", "lock_waits", "dialog operations that found their lock busy and yielded"),
    ("clusterer", "shtag_changes", "times a sharing tag became active or backup here"),
    ("clusterer", "shtag_takeovers", "sharing tags this node took over automatically"),
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
