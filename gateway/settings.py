"""The gateway's settings: one typed object, from flags and ``GATEWAY_*`` / ``CHATSVC_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatsvc.client import ClientSettings
from chatsvc.config import parse_addr, setting
from chatsvc.wire.framing import Transport

MIN_JWT_SECRET_BYTES = 32


def check_jwt_secret(secret: str) -> None:
    """Refuse a missing or short HS256 key (a short one can be brute-forced offline from any token)."""
    if not secret:
        raise ValueError("GATEWAY_JWT_SECRET is not set (GATEWAY_AUTH needs it)")
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ValueError(f"GATEWAY_JWT_SECRET is too short: {len(secret.encode())} bytes, "
                         f"at least {MIN_JWT_SECRET_BYTES} needed (e.g. `openssl rand -hex 32`)")


@dataclass(frozen=True)
class GatewaySettings:
    """gateway: the chat service's HTTP API."""

    host: str = setting("0.0.0.0", "GATEWAY_HOST", "address to listen on")
    port: int = setting(8080, "GATEWAY_PORT", "HTTP port to listen on")
    workers: int = setting(1, "GATEWAY_WORKERS", "worker processes sharing the port (SO_REUSEPORT)")
    reuse_port: bool = setting(False, "GATEWAY_REUSE_PORT", "bind with SO_REUSEPORT")
    chatsvc_addr: str = setting("127.0.0.1:8888", "CHATSVC_ADDR", "chatsvc host:port")
    chatsvc_addrs: str = setting("", "CHATSVC_ADDRS",
                                 "several chatsvc instances, host:port,host:port (overrides CHATSVC_ADDR)")
    probe_interval: float = setting(0.5, "GATEWAY_PROBE_INTERVAL",
                                    "seconds between probes of a chatsvc instance that failed")
    chatsvc_transport: str = setting("framed", "CHATSVC_TRANSPORT",
                                     "buffered, framed, ttheader or ttheader_framed")
    pool_size: int = setting(4, "GATEWAY_POOL_SIZE", "persistent connections to chatsvc")
    pipeline: int = setting(32, "GATEWAY_PIPELINE", "calls in flight per chatsvc connection")
    connect_timeout: float = setting(1.0, "GATEWAY_CONNECT_TIMEOUT", "seconds to connect to chatsvc")
    call_timeout: float = setting(5.0, "GATEWAY_CALL_TIMEOUT", "seconds for a chatsvc call")
    max_body_bytes: int = setting(64 * 1024, "GATEWAY_MAX_BODY_BYTES", "larger bodies get 413")
    max_connections: int = setting(10_000, "GATEWAY_MAX_CONNECTIONS",
                                   "open client connections; beyond it an idle one is closed, or the new one gets 503")
    header_timeout: float = setting(10.0, "GATEWAY_HEADER_TIMEOUT",
                                    "seconds for a request's headers to arrive, else the connection is closed")
    body_timeout: float = setting(10.0, "GATEWAY_BODY_TIMEOUT", "seconds for a request body to arrive, else 408")
    keepalive_timeout: float = setting(75.0, "GATEWAY_KEEPALIVE_TIMEOUT",
                                       "seconds an idle keep-alive connection is kept open")
    max_pipelined: int = setting(32, "GATEWAY_MAX_PIPELINED",
                                 "requests queued on one connection (HTTP pipelining) before reading pauses")
    auth: bool = setting(False, "GATEWAY_AUTH", "require a bearer token (JWT, HS256) but on /ping and /openapi.json")
    # repr=False: the settings object may be logged; the secret must not be.
    jwt_secret: str = field(default="", repr=False, metadata={
        "env": "GATEWAY_JWT_SECRET",
        "help": "HS256 key of at least 32 bytes, needed by GATEWAY_AUTH (use the environment: flags show in ps)"})
    jwt_leeway: float = setting(30.0, "GATEWAY_JWT_LEEWAY", "seconds of clock skew allowed on a token's exp/nbf/iat")
    drain_timeout: float = setting(5.0, "GATEWAY_DRAIN_TIMEOUT", "seconds to finish requests on stop")
    access_log: bool = setting(True, "GATEWAY_ACCESS_LOG", "one log line per request")
    log_level: str = setting("INFO", "GATEWAY_LOG_LEVEL", "logging level")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if not self.chatsvc_instances:
            raise ValueError("no chatsvc address")
        Transport(self.chatsvc_transport)
        for name in ("workers", "pool_size", "pipeline", "max_body_bytes", "max_connections", "max_pipelined"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("connect_timeout", "call_timeout", "header_timeout", "body_timeout", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.jwt_leeway < 0:
            raise ValueError("jwt_leeway must not be negative")
        if self.auth:
            check_jwt_secret(self.jwt_secret)

    @property
    def chatsvc_instances(self) -> list[tuple[str, int]]:
        """Every chatsvc address: CHATSVC_ADDRS if set, else CHATSVC_ADDR."""
        raw = self.chatsvc_addrs or self.chatsvc_addr
        return [parse_addr(a, 8888) for a in raw.split(",") if a.strip()]

    @property
    def client(self) -> ClientSettings:
        return ClientSettings(transport=Transport(self.chatsvc_transport),
                              connect_timeout=self.connect_timeout, call_timeout=self.call_timeout,
                              pool_size=self.pool_size, pipeline=self.pipeline)
