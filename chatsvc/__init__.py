"""chatsvc: the IMService RPC backend (Thrift over TCP, Redis storage) and its Python client."""

__version__ = "0.1.0"
