"""chatsvc's settings: one typed object, from flags and ``CHATSVC_*`` / ``REDIS_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass

from chatsvc.config import setting
from chatsvc.storage import is_cluster_url, parse_cluster_url

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The business limits, owned by the service layer."""

    default_limit: int = 10
    max_limit: int = 100
    max_member_bytes: int = 64
    max_text_bytes: int = 4096


@dataclass(frozen=True)
class WireLimits:
    """Limits enforced on the wire before anything is allocated."""

    max_frame_bytes: int = 16 * MiB
    max_string_bytes: int = 16 * MiB
    max_container_items: int = 1_000_000
    max_depth: int = 64
    max_header_bytes: int = 64 * 1024


@dataclass(frozen=True)
class ChatsvcSettings:
    """chatsvc: the IMService Thrift RPC server backed by Redis."""

    host: str = setting("0.0.0.0", "CHATSVC_HOST", "address to listen on")
    port: int = setting(8888, "CHATSVC_PORT", "TCP port to listen on")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "REDIS_URL", "Redis URL")
    redis_pool_size: int = setting(64, "REDIS_POOL_SIZE", "max Redis connections")
    redis_timeout: float = setting(2.0, "REDIS_TIMEOUT", "seconds per Redis command")
    redis_connect_timeout: float = setting(1.0, "REDIS_CONNECT_TIMEOUT", "seconds to connect")
    redis_batch: bool = setting(True, "REDIS_BATCH", "pipeline concurrent calls' Redis commands")
    redis_cluster: bool = setting(False, "REDIS_CLUSTER",
                                  "REDIS_URL is a Redis Cluster node (redis+cluster:// URLs always are)")
    redis_cluster_wait_replicas: int = setting(0, "REDIS_CLUSTER_WAIT_REPLICAS",
                                               "cluster: a send succeeds once WAIT counts this many "
                                               "replicas with it (0: off, asynchronous replication)")
    redis_cluster_wait_timeout: float = setting(0.5, "REDIS_CLUSTER_WAIT_TIMEOUT",
                                                "cluster: seconds WAIT waits for the replicas")
    default_limit: int = setting(10, "CHATSVC_DEFAULT_LIMIT", "pull page size when Limit is 0")
    max_limit: int = setting(100, "CHATSVC_MAX_LIMIT", "larger pull limits are clamped to this")
    max_member_bytes: int = setting(64, "CHATSVC_MAX_MEMBER_BYTES", "max UTF-8 bytes of a name")
    max_text_bytes: int = setting(4096, "CHATSVC_MAX_TEXT_BYTES", "max UTF-8 bytes of a text")
    max_frame_bytes: int = setting(16 * MiB, "CHATSVC_MAX_FRAME_BYTES", "max message size")
    max_header_bytes: int = setting(64 * 1024, "CHATSVC_MAX_HEADER_BYTES", "max TTHeader size")
    max_connections: int = setting(10_000, "CHATSVC_MAX_CONNECTIONS", "concurrent connections")
    max_pipeline: int = setting(64, "CHATSVC_MAX_PIPELINE", "calls in flight per connection")
    flush_bytes: int = setting(8192, "CHATSVC_FLUSH_BYTES",
                               "write a connection's queued replies once this many bytes are ready, "
                               "before the end of the event-loop pass (0: at the end only)")
    idle_timeout: float = setting(600.0, "CHATSVC_IDLE_TIMEOUT", "close idle connections (s)")
    read_timeout: float = setting(10.0, "CHATSVC_READ_TIMEOUT",
                                  "seconds a message may take to arrive once started (slow senders)")
    drain_timeout: float = setting(5.0, "CHATSVC_DRAIN_TIMEOUT", "seconds to finish calls on stop")
    log_level: str = setting("INFO", "CHATSVC_LOG_LEVEL", "logging level")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if not 0 < self.default_limit <= self.max_limit:
            raise ValueError("need 0 < default_limit <= max_limit")
        for name in ("redis_pool_size", "max_member_bytes", "max_text_bytes", "max_frame_bytes",
                     "max_header_bytes", "max_connections", "max_pipeline"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        self._validate_redis()
        if self.flush_bytes < 0:
            raise ValueError("flush_bytes must not be negative")
        if self.max_frame_bytes >= 256 * MiB:
            # A framed length whose top bytes read 10 00 would be taken for a TTHeader.
            raise ValueError("max_frame_bytes must be below 256 MiB")

    @property
    def redis_cluster_mode(self) -> bool:
        """Use redis-py's RedisCluster: a ``redis+cluster://`` URL, or REDIS_CLUSTER=true."""
        return self.redis_cluster or is_cluster_url(self.redis_url)

    def _validate_redis(self) -> None:
        if self.redis_cluster_mode:
            parse_cluster_url(self.redis_url)  # raises ValueError with the reason
        if self.redis_cluster_wait_replicas < 0:
            raise ValueError("redis_cluster_wait_replicas must not be negative")
        if self.redis_cluster_wait_replicas:
            if not (self.redis_cluster_mode and self.redis_batch):
                raise ValueError("REDIS_CLUSTER_WAIT_REPLICAS needs a Redis Cluster and REDIS_BATCH=true")
            if not 0 < self.redis_cluster_wait_timeout < self.redis_timeout:
                raise ValueError("need 0 < redis_cluster_wait_timeout < redis_timeout")

    @property
    def limits(self) -> Limits:
        return Limits(self.default_limit, self.max_limit, self.max_member_bytes,
                      self.max_text_bytes)

    @property
    def wire_limits(self) -> WireLimits:
        return WireLimits(max_frame_bytes=self.max_frame_bytes,
                          max_string_bytes=self.max_frame_bytes,
                          max_header_bytes=self.max_header_bytes)
