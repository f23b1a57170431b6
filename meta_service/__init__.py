"""The metadata service (3FS meta): namespace operations as KV transactions.

Stateless: inodes, dentries, write sessions, the GC queue and idempotency records
all live in the KV store, so any number of meta processes can share one store and
a killed one loses nothing.
"""
