"""Namespace operations, one module per family. Each op is a plain function
`op(tr, ctx, req, ...)` that runs inside the caller's transaction, so it composes
with idempotency records and is retried whole on a conflict (it must not keep
state across attempts)."""
