"""py3fs client library: `Client` (async), `SyncClient` (blocking)."""

from client.client import Client, File
from client.config import ClientConfig, load_client_config
from client.sync import SyncClient, SyncFile

__all__ = [
    "Client",
    "ClientConfig",
    "File",
    "SyncClient",
    "SyncFile",
    "load_client_config",
]
