"""The SIP applications of a node: the registrar and its user location (usrloc), NAT
pinging, dialogs; the proxy and transactions will live here too.

They run in the SIP workers and the timer process, on the shared tables (shm). They may
import core, shm, services.mi (to register MI commands) and services.cluster.api --
never another module of services.cluster.
"""
