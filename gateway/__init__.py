"""gateway: the HTTP API of the chat service (aiohttp), calling chatsvc over Thrift."""
