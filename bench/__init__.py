"""``python -m bench``: load tests of the gateway (HTTP) and of chatsvc (Thrift), and a Redis memory figure.

Modules: ``__main__`` (command line), ``runner`` (the modes and the interleaved rounds),
``system`` (the processes it starts; their CPU and peak RSS), ``workload`` (request bodies,
correctness probe, preload), ``wrk`` and ``loadgen`` (HTTP load generators: wrk, asyncio closed
and open loop), ``thrift`` (chatsvc alone), ``memory`` (Redis bytes per message), ``noise`` (emulated CPU contention, ``--noise``), ``stats``
(histogram, results, medians) and ``report`` (tables, JSON, PNG). See docs/performance.md.
``python -m bench.cluster_pipelining`` compares ways to pipeline on a Redis Cluster (docs/scaling.md).
"""
