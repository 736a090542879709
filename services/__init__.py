"""fastcluster.services: the cluster layers and the applications, in four packages.

    cluster/  links, topology, routing, capabilities, sync, replication, partitions,
              and the narrow API (cluster/api.py) that every consumer binds to
    sip/      registrar, usrloc, NAT pinging, dialogs (the proxy and transactions later)
    mi/       the MI registry, server, client and commands
    script/   the user's script API, its runtime and its bridge

Services may import core and shm; packages other than cluster see the cluster layer
only through services.cluster.api. workers/ wires them into processes.
"""
