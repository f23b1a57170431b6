"""The cluster manager (3FS mgmtd): membership, heartbeats, chain tables, routing.

`python -m mgmt_service --kv URL` runs it; `MgmtServer` is the RPC surface and
`MgmtState` the domain logic behind it.
"""
