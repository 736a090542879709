"""The management interface: the command registry and JSON-RPC dispatch (registry), the
HTTP server (server), the client behind `fastcluster mi` (client), remote commands over
the cluster (remote) and the core and clusterer commands.

registry imports nothing from the other services packages (every package registers its
commands with it); the command modules may import core, shm, services.sip and
services.cluster.api, never another module of services.cluster.
"""
