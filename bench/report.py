"""What a run prints (per-round lines, tables) and writes (JSON, and a PNG when matplotlib is there)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import LoadResult, Summary
from bench.system import LOADGEN

PROCESS_ORDER = ("gateway", "chatsvc", "redis", LOADGEN)


_NUMERIC = re.compile(r"^(-|[-+]?\d[\d.]*x?)$")  # numbers, ratios ("0.38x") and "-" are right-aligned


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    body = [[_cell(v) for v in row] for row in rows]
    cells = [[str(h) for h in headers], *body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [bool(body) and all(_NUMERIC.match(r[i]) for r in body) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def _cell(value: object) -> str:
    if isinstance(value, float):  # rounded once first, so 3234.5000001 and 3234.5 print alike
        value = round(value, 2)
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    return "-" if value is None else str(value)


def round_line(r: LoadResult, rounds: int) -> str:
    m = r.m
    cpu = " ".join(f"{name}={secs:.2f}s" for name, secs in _ordered(r.cpu_s))
    line = (f"round {r.round}/{rounds}  {r.target:<16} {r.load:<12} req/s={m.rps:<9.1f} p50={m.p50_ms:.2f}ms "
            f"p90={m.p90_ms:.2f}ms p99={m.p99_ms:.2f}ms max={m.max_ms:.1f}ms errors={m.errors} "
            f"sockerr={m.sockerr}  cpu {cpu}")
    if "issue_lag_p99_ms" in m.extra:
        line += f"  issued={m.extra['issued']} issue-lag p99={m.extra['issue_lag_p99_ms']:.2f}ms"
    if "host_steal_pct" in m.extra:
        line += f"  steal={m.extra['host_steal_pct']:.1f}%"
    return line


def _ordered(cpu: dict[str, float]) -> list[tuple[str, float]]:
    """Our processes in PROCESS_ORDER, other names (another stack's, ``--vs-pid``) by name before
    the load generator."""
    rank = {name: i for i, name in enumerate(PROCESS_ORDER)}
    other = rank[LOADGEN] - 0.5
    return sorted(cpu.items(), key=lambda kv: (rank.get(kv[0], other), kv[0]))


def summary_table(summaries: list[Summary]) -> str:
    """Medians per target and load; the CPU columns are each process's CPU per request (µs)."""
    names = [n for n, _ in _ordered({n: 0.0 for s in summaries for n in s.cpu_us_per_request})]
    headers = ["target", "load", "rounds", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "sockerr",
               *(f"{n} µs/req" for n in names)]
    rows = [[s.target, s.load, s.rounds, s.rps, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.errors, s.sockerr,
             *(s.cpu_us_per_request.get(n) for n in names)] for s in summaries]
    return table(headers, rows)


def comparisons(summaries: list[Summary], ours: str, theirs: str) -> list[dict[str, Any]]:
    """Per load: medians of both targets and the ratios ours/theirs of req/s and p99."""
    by_key = {(s.target, s.load): s for s in summaries}
    out = []
    for load in dict.fromkeys(s.load for s in summaries):
        a, b = by_key.get((ours, load)), by_key.get((theirs, load))
        if a is None or b is None:
            continue
        out.append({"load": load, "rps_ours": round(a.rps, 1), "rps_theirs": round(b.rps, 1),
                    "rps_ratio": round(a.rps / b.rps, 3) if b.rps else None,
                    "p99_ms_ours": round(a.p99_ms, 3), "p99_ms_theirs": round(b.p99_ms, 3),
                    "p99_ratio": round(a.p99_ms / b.p99_ms, 3) if b.p99_ms else None})
    return out


def comparison_table(rows: list[dict[str, Any]], ours: str, theirs: str) -> str:
    headers = ["load", f"req/s {ours}", f"req/s {theirs}", "req/s ours/theirs",
               f"p99 ms {ours}", f"p99 ms {theirs}", "p99 ours/theirs"]
    return table(headers, [[r["load"], r["rps_ours"], r["rps_theirs"], _ratio(r["rps_ratio"]), r["p99_ms_ours"],
                            r["p99_ms_theirs"], _ratio(r["p99_ratio"])] for r in rows])


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def process_table(peaks: dict[str, dict[str, int]]) -> str:
    rows = [[name, info["pid"], info["peak_rss_kib"] / 1024] for name, info in peaks.items()]
    return table(["process", "pid", "peak RSS MiB"], rows)


def memory_table(mem: dict[str, Any]) -> str:
    rows = [["messages stored", mem["messages"]], ["chats", mem["chats"]], ["text bytes", mem["text_bytes"]],
            ["used_memory before", mem["used_memory_before"]], ["used_memory after", mem["used_memory_after"]],
            ["bytes per message", mem["bytes_per_message"]], ["keys after", mem["keys_after"]],
            ["fill time s", mem["fill_s"]], ["fill msg/s", mem["fill_rps"]]]
    return table(["redis memory", "value"], rows)


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(path: Path, summaries: list[Summary], title: str) -> str:
    """p50/p90/p99 bars per (target, load); returns what happened, for the user."""
    if not summaries:
        return "no latency figures: no plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib to get one)"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(summaries)), 4.5))
    width = 0.27
    for i, (name, attr) in enumerate((("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))):
        xs = [x + (i - 1) * width for x in range(len(summaries))]
        ax.bar(xs, [getattr(s, attr) for s in summaries], width, label=name)
    ax.set_xticks(range(len(summaries)), [f"{s.target}\n{s.load}" for s in summaries])
    ax.set_ylabel("latency, ms (median of rounds)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
