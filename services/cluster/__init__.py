"""The cluster layer: links between nodes, topology (membership, heartbeats, link-state
routing), capabilities, full sync, realtime replication of the shared tables, and the
NAT ping partition map.

Consumers import only `services.cluster.api` (the narrow API, as OpenSIPS's clusterer
api.h); everything else here is private to the package. Modules here may import core,
shm and each other, never services.sip, services.mi or services.script: the cluster
layer serves the applications, it does not use them. Wiring (which consumer subscribes
to what) happens in one place, workers.cluster.
"""
