"""The gateway's settings: one typed object, from flags and ``GATEWAY_*`` / ``CHATSVC_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass

from chatsvc.client import ClientSettings
from chatsvc.config import parse_addr, setting
from chatsvc.wire.framing import Transport


@dataclass(frozen=True)
class GatewaySettings:
    """gateway: the chat service's HTTP API."""

    host: str = setting("0.0.0.0", "GATEWAY_HOST", "address to listen on")
    port: int = setting(8080, "GATEWAY_PORT", "HTTP port to listen on")
    workers: int = setting(1, "GATEWAY_WORKERS", "worker processes sharing the port (SO_REUSEPORT)")
    reuse_port: bool = setting(False, "GATEWAY_REUSE_PORT", "bind with SO_REUSEPORT")
    chatsvc_addr: str = setting("127.0.0.1:8888", "CHATSVC_ADDR", "chatsvc host:port")
    chatsvc_transport: str = setting("framed", "CHATSVC_TRANSPORT",
                                     "buffered, framed, ttheader or ttheader_framed")
    pool_size: int = setting(4, "GATEWAY_POOL_SIZE", "persistent connections to chatsvc")
    pipeline: int = setting(32, "GATEWAY_PIPELINE", "calls in flight per chatsvc connection")
    connect_timeout: float = setting(1.0, "GATEWAY_CONNECT_TIMEOUT", "seconds to connect to chatsvc")
    call_timeout: float = setting(5.0, "GATEWAY_CALL_TIMEOUT", "seconds for a chatsvc call")
    max_body_bytes: int = setting(64 * 1024, "GATEWAY_MAX_BODY_BYTES", "larger bodies get 413")
    drain_timeout: float = setting(5.0, "GATEWAY_DRAIN_TIMEOUT", "seconds to finish requests on stop")
    access_log: bool = setting(True, "GATEWAY_ACCESS_LOG", "one log line per request")
    log_level: str = setting("INFO", "GATEWAY_LOG_LEVEL", "logging level")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        parse_addr(self.chatsvc_addr, 8888)
        Transport(self.chatsvc_transport)
        for name in ("workers", "pool_size", "pipeline", "max_body_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.connect_timeout <= 0 or self.call_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def chatsvc(self) -> tuple[str, int]:
        return parse_addr(self.chatsvc_addr, 8888)

    @property
    def client(self) -> ClientSettings:
        return ClientSettings(transport=Transport(self.chatsvc_transport),
                              connect_timeout=self.connect_timeout, call_timeout=self.call_timeout,
                              pool_size=self.pool_size, pipeline=self.pipeline)
