"""kv_cache (in progress)."""
