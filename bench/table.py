#!/usr/bin/env python3
"""Turns the key=value lines of bench/run.sh into the markdown table of BENCHMARKS.md.

Every measure is the median over the repetitions (min-max beside it); ratios compare
smtp_bridge with the reference measured in the same invocation (Postfix's smtp-sink, or the
bridge sink absorbing PUTs on its own). The table replaces what stands between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers of the output file; the prose around
them is kept.

Usage: table.py RESULTS.txt BENCHMARKS.md  (machine facts come from the environment)
"""

import math
import os
import statistics
import sys

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def parse(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            kv = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    kv[k] = v
            if kv:
                rows.append(kv)
    return rows


def values(rows, target, measure, key):
    out = []
    for r in rows:
        if r.get("target") != target or r.get("measure") != measure or "run_failed" in r:
            continue
        try:
            v = float(r[key])
        except (KeyError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def med(rows, target, measure, key, scale=1.0):
    v = values(rows, target, measure, key)
    if not v:
        return None, None, None
    return statistics.median(v) * scale, min(v) * scale, max(v) * scale


def fmt(x, digits):
    if x is None:
        return "n/a"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def cell(triple, digits, unit=""):
    m, lo, hi = triple
    if m is None:
        return "n/a"
    if lo == hi:
        return f"{fmt(m, digits)}{unit}"
    return f"{fmt(m, digits)}{unit} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def main():
    results, out = sys.argv[1], sys.argv[2]
    rows = parse(results)
    env = os.environ
    sessions = env.get("SESSIONS", "20")
    huge = env.get("HUGE_MIB", "20")
    idle = env.get("IDLE", "1000")
    KB = 1 / 1024.0

    # (measure, target text, kind, limit, daemon (t, m, key, scale), reference, digits, unit)
    spec = [
        (f"accepted msg/s, 1 KiB, {sessions} sessions reusing connections", "≥ 50% of smtp-sink",
         "ratio_ge", 0.5, ("daemon", "reuse1k", "accepted_per_s", 1), ("reference", "reuse1k", "accepted_per_s", 1), 0, ""),
        (f"accepted msg/s, 1 KiB, {sessions} sessions, new connection per message", "≥ 60% of smtp-sink",
         "ratio_ge", 0.6, ("daemon", "new1k", "accepted_per_s", 1), ("reference", "new1k", "accepted_per_s", 1), 0, ""),
        (f"accepted msg/s, 1 MiB, {sessions} sessions", "≥ 80% of smtp-sink",
         "ratio_ge", 0.8, ("daemon", "reuse1m", "accepted_per_s", 1), ("reference", "reuse1m", "accepted_per_s", 1), 1, ""),
        ("delivered msg/s end to end, 1 KiB", "≥ 90% of the sink alone (PUT/s)",
         "ratio_ge", 0.9, ("daemon", "reuse1k", "delivered_per_s", 1), ("sink", "absorb", "puts_per_s", 1), 0, ""),
        (f"p99 latency of the final 250, 1 KiB, {sessions} sessions", "≤ 5 ms",
         "abs_le", 5.0, ("daemon", "reuse1k", "p99_ms", 1), ("reference", "reuse1k", "p99_ms", 1), 2, " ms"),
        ("daemon CPU per 1 KiB message (accept + deliver)", "≤ 0.15 ms",
         "abs_le", 0.15, ("daemon", "reuse1k", "server_cpu_ms_per_msg", 1), ("reference", "reuse1k", "server_cpu_ms_per_msg", 1), 3, " ms"),
        ("daemon CPU per 1 KiB message, with a syslog daemon reading the log", "≤ 0.15 ms",
         "abs_le", 0.15, ("daemon", "reuse1k_syslog", "server_cpu_ms_per_msg", 1), ("reference", "reuse1k", "server_cpu_ms_per_msg", 1), 3, " ms"),
        ("daemon peak RSS, idle", "≤ 8 MiB",
         "abs_le", 8.0, ("daemon", "idle", "hwm_kb", KB), ("reference", "idle", "hwm_kb", KB), 1, " MiB"),
        (f"daemon peak RSS, {sessions} sessions × 1 KiB", "≤ 12 MiB",
         "abs_le", 12.0, ("daemon", "reuse1k", "server_hwm_kb", KB), ("reference", "reuse1k", "server_hwm_kb", KB), 1, " MiB"),
        (f"daemon peak RSS, {sessions} concurrent {huge} MiB messages", "≤ 64 MiB",
         "abs_le", 64.0, ("daemon", "huge", "server_hwm_kb", KB), ("reference", "huge", "server_hwm_kb", KB), 1, " MiB"),
        (f"{idle} idle connections: RSS growth", "≤ +16 MiB",
         "abs_le", 16.0, ("daemon", "idle1000", "server_rss_delta_kb", KB), ("reference", "idle1000", "server_rss_delta_kb", KB), 1, " MiB"),
        (f"{idle} idle connections: slowest greeting of a new client", "≤ 50 ms",
         "abs_le", 50.0, ("daemon", "idle1000", "greet_max_ms", 1), ("reference", "idle1000", "greet_max_ms", 1), 2, " ms"),
        ("`sendmail` shim, 1 KiB, bridge up: median wall per message", "≤ 5 ms",
         "abs_le", 5.0, ("shim", "shim", "wall_p50_ms", 1), ("shim", "exec_floor", "wall_p50_ms", 1), 2, " ms"),
    ]

    lines = []
    lines.append(BEGIN)
    lines.append("")
    lines.append(f"Command: `bench/run.sh` (R={env.get('R')}: medians of {env.get('R')} runs, min–max in brackets; "
                 f"a fresh server for every measure of every run)  ")
    lines.append(f"Machine: {env.get('NPROC')} cores (`nproc`), {env.get('MACHINE_CPU')}, {env.get('MACHINE_MEM')}, "
                 f"Linux {env.get('KERNEL')}; spool on {env.get('FS')}  ")
    lines.append(f"Build: {env.get('RUSTC')}, release profile, commit {env.get('COMMIT')} "
                 f"(daemon `{os.path.relpath(env.get('DAEMON_BIN', '?'), os.getcwd())}`, sha256 {env.get('DAEMON_SHA')}); "
                 f"reference: smtp-sink from Debian postfix {env.get('POSTFIX_VERSION')}  ")
    lines.append(f"Load: {sessions} sessions; {env.get('N_SMALL')} × 1 KiB (kept connections, MAIL/RCPT/DATA pipelined), "
                 f"{env.get('N_NEW')} × 1 KiB (one connection each), {env.get('N_LARGE')} × 1 MiB, "
                 f"{sessions} × {huge} MiB at once, {idle} idle connections, {env.get('SINK_N')} PUTs to the sink alone, "
                 f"{env.get('SHIM_N')} `sendmail -t -i` runs"
                 + ("; the kept-connection load once more with `bench/syslog_sink.py` as the daemon's syslog"
                    if any(r.get("measure") == "syslog" for r in rows) else ""))
    lines.append("")
    lines.append("| measure | target | smtp_bridge | reference | ratio | result |")
    lines.append("|---|---|---:|---:|---:|:---:|")
    for name, target, kind, limit, d, ref, digits, unit in spec:
        dm = med(rows, d[0], d[1], d[2], d[3])
        rm = med(rows, ref[0], ref[1], ref[2], ref[3]) if ref else (None, None, None)
        ratio = None
        if dm[0] is not None and rm[0] not in (None, 0.0):
            ratio = dm[0] / rm[0]
        result = "n/a"
        if kind == "ratio_ge" and ratio is not None:
            result = "pass" if ratio >= limit else "**miss**"
        elif kind == "abs_le" and dm[0] is not None:
            result = "pass" if dm[0] <= limit else "**miss**"
        ratio_s = "n/a" if ratio is None else (f"{ratio:.0%}" if kind == "ratio_ge" else f"{ratio:.2f}×")
        lines.append(f"| {name} | {target} | {cell(dm, digits, unit)} | {cell(rm, digits, unit)} | {ratio_s} | {result} |")
    lines.append("")
    if any(r.get("target") == "candidate" for r in rows):
        cand = env.get("CANDIDATE_BIN", "?")
        conf = env.get("CANDIDATE_CONF", "")
        conf_s = f", configured with `{conf}`" if conf else ""
        lines.append(f"Candidate build measured in the same repetitions (`{os.path.relpath(cand, os.getcwd())}`, "
                     f"sha256 {env.get('CANDIDATE_SHA')}{conf_s}): before/after on the same disk at the same moments.")
        lines.append("")
        lines.append("| measure | target | smtp_bridge now | with the candidate | ratio to reference | result |")
        lines.append("|---|---|---:|---:|---:|:---:|")
        for name, target, kind, limit, d, ref, digits, unit in spec:
            if d[0] != "daemon":
                continue
            dm = med(rows, d[0], d[1], d[2], d[3])
            cm = med(rows, "candidate", d[1], d[2], d[3])
            rm = med(rows, ref[0], ref[1], ref[2], ref[3]) if ref else (None, None, None)
            ratio = cm[0] / rm[0] if cm[0] is not None and rm[0] not in (None, 0.0) else None
            result = "n/a"
            if kind == "ratio_ge" and ratio is not None:
                result = "pass" if ratio >= limit else "**miss**"
            elif kind == "abs_le" and cm[0] is not None:
                result = "pass" if cm[0] <= limit else "**miss**"
            ratio_s = "n/a" if ratio is None else (f"{ratio:.0%}" if kind == "ratio_ge" else f"{ratio:.2f}×")
            lines.append(f"| {name} | {target} | {cell(dm, digits, unit)} | {cell(cm, digits, unit)} | {ratio_s} | {result} |")
        lines.append("")
    # Where the daemon's CPU goes, per thread name (from /proc/PID/task/*/stat).
    def thread_split(target):
        per = {}
        for r in rows:
            if r.get("target") != target or r.get("measure") != "reuse1k" or "run_failed" in r:
                continue
            for part in r.get("server_thread_ms_per_msg", "").split(","):
                if ":" in part:
                    name, v = part.rsplit(":", 1)
                    try:
                        per.setdefault(name, []).append(float(v))
                    except ValueError:
                        pass
        return ", ".join(f"{n} {statistics.median(v):.3f} ms" for n, v in sorted(per.items()))
    for target, label in (("daemon", "smtp_bridge now"), ("candidate", "with the candidate")):
        split = thread_split(target)
        if split:
            lines.append(f"CPU per 1 KiB message by thread, {label} (medians; `smtp_bridge` is the event loop): {split}.  ")
    lines.append("")
    lines.append("Reference column: Postfix's smtp-sink (accepts and discards, never fsyncs), driven by the same "
                 "load generator in the same invocation; for the end-to-end row, the bridge sink absorbing "
                 "sequential PUTs (one connection each, as the real bridge serves them) with nothing in front; "
                 "for the shim, `/bin/true` started the same way (the cost of starting any program here).")
    lines.append("")

    # What durability costs on this disk: the physical bound on accepted msg/s.
    fs_n = len([r for r in rows if r.get("measure") == "fsync" and "run_failed" not in r])
    if fs_n:
        def fsm(key):
            m = med(rows, "machine", "fsync", key)[0]
            return 0.0 if m is None else m
        lines.append(f"What durability costs on this disk (`loadgen fsync`: 1 KiB files, batches of {sessions}, "
                     f"median of 50 rounds per run, median over {fs_n} runs). A daemon that fsyncs every message "
                     f"cannot accept faster than the right-hand column with {sessions} sessions:")
        lines.append("")
        lines.append("| how a message is made durable | time | bound on accepted msg/s | CPU per message |")
        lines.append("|---|---:|---:|---:|")
        lines.append(f"| alone: write, fdatasync, rename, directory fsync | {fsm('single_ms'):.3f} ms | "
                     f"{fsm('single_bound_per_s'):,.0f} (one at a time) | {fsm('single_cpu_ms'):.3f} ms |")
        lines.append(f"| batch of {sessions}: fdatasync one after another, one directory fsync | "
                     f"{fsm('serial_batch_ms'):.3f} ms | {fsm('serial_bound_per_s'):,.0f} | {fsm('serial_cpu_ms'):.3f} ms |")
        lines.append(f"| batch of {sessions}: fdatasyncs in parallel threads, one directory fsync | "
                     f"{fsm('parallel_batch_ms'):.3f} ms | {fsm('parallel_bound_per_s'):,.0f} | {fsm('parallel_cpu_ms'):.3f} ms |")
        lines.append(f"| batch of {sessions}: one syncfs of the file system, one directory fsync | "
                     f"{fsm('syncfs_batch_ms'):.3f} ms | {fsm('syncfs_bound_per_s'):,.0f} | {fsm('syncfs_cpu_ms'):.3f} ms |")
        if med(rows, "machine", "fsync", "journal_batch_ms")[0] is not None:
            lines.append(f"| (not built) batch of {sessions} written in place into a preallocated log, one fdatasync | "
                         f"{fsm('journal_batch_ms'):.3f} ms | {fsm('journal_bound_per_s'):,.0f} | {fsm('journal_cpu_ms'):.3f} ms |")
        lines.append("")
        journal_tail = ""
        if med(rows, "machine", "fsync", "journal_batch_p99_ms")[0] is not None:
            journal_tail = f", {fsm('journal_batch_p99_ms'):.1f} ms (log)"
        lines.append(f"Tail: the slowest 1% of batch commits took {fsm('parallel_batch_p99_ms'):.1f} ms (parallel "
                     f"fdatasyncs), {fsm('syncfs_batch_p99_ms'):.1f} ms (syncfs){journal_tail}. A message that arrives while a "
                     "batch is being synced waits for that batch and then its own, so the p99 of the final 250 cannot "
                     "be below about one slow batch commit, whatever the daemon does.")
        lines.append("")
        lines.append(f"Bulk: 64 MiB written then fdatasync'd at {fsm('bulk_mib_per_s'):,.0f} MiB/s (so 1 MiB and 20 MiB "
                     "messages are not bounded by the disk's bandwidth).")
        lines.append("")

    # What the end-to-end target leaves in CPU: every process of that row shares NPROC cores.
    client = med(rows, "daemon", "reuse1k", "client_cpu_ms_per_msg")[0]
    daemon = med(rows, "daemon", "reuse1k", "server_cpu_ms_per_msg")[0]
    sink = med(rows, "daemon", "reuse1k", "sink_cpu_ms_per_msg")[0]
    put_client = med(rows, "sink", "absorb", "client_cpu_ms_per_put")[0]
    put_sink = med(rows, "sink", "absorb", "sink_cpu_ms_per_put")[0]
    alone = med(rows, "sink", "absorb", "puts_per_s")[0]
    cores = float(env.get("NPROC") or 0)
    if None not in (client, daemon, sink, put_client, put_sink, alone) and cores > 0:
        total = client + daemon + sink
        goal = 0.9 * alone
        budget = cores * 1000.0 / goal
        lines.append(f"What the end-to-end row costs in CPU (medians, ms per 1 KiB message): the load generator "
                     f"{client:.3f}, smtp_bridge {daemon:.3f}, the sink {sink:.3f}; {total:.3f} in all, so on "
                     f"{cores:.0f} cores no arrangement of that work, in order or not, delivers more than "
                     f"{cores * 1000.0 / total:,.0f} msg/s. 90% of the sink alone is {goal:,.0f} msg/s, a budget of "
                     f"{budget:.3f} ms per message for all three; after the load generator's and the sink's "
                     f"share, {budget - client - sink:.3f} ms is left for smtp_bridge to accept, commit, digest "
                     f"and PUT a message. The sink-alone loop itself, which does nothing but PUT, spends "
                     f"{put_client:.3f} ms in its client and {put_sink:.3f} ms in the sink per PUT.")
        lines.append("")

    # Sanity: every run must have delivered what it claims.
    problems = []
    for r in rows:
        label = f"{r.get('target')}/{r.get('measure')} run {r.get('rep')}"
        if "run_failed" in r:
            problems.append(f"{label}: the run failed (see the loadgen log)")
            continue
        if r.get("cmd") == "smtp":
            if r.get("accepted") != r.get("messages"):
                problems.append(f"{label}: {r.get('accepted')} of {r.get('messages')} accepted "
                                f"(refused {r.get('refused')}, I/O errors {r.get('io_errors')}; replies {r.get('replies')})")
            if "delivered" in r and r.get("delivered") != r.get("accepted"):
                problems.append(f"{label}: {r.get('delivered')} of {r.get('accepted')} delivered to the sink")
        if r.get("sink_rejected", "0") != "0":
            problems.append(f"{label}: the sink rejected {r.get('sink_rejected')} PUTs as breaking bridge-api.md")
        if r.get("cmd") == "idle" and r.get("greeted") != r.get("connections"):
            problems.append(f"{label}: {r.get('greeted')} of {r.get('connections')} idle connections greeted "
                            f"(replies {r.get('replies')})")
        if r.get("cmd") == "exec" and r.get("failures", "0") != "0":
            problems.append(f"{label}: {r.get('failures')} sendmail runs failed")
        if r.get("measure") == "syslog":
            want = int(env.get("N_SMALL", "0"))
            got = (int(r.get("from_lines", "0")), int(r.get("sent_lines", "0")))
            if got != (want, want) or r.get("lost_reports", "0") != "0":
                problems.append(f"{label}: {got[0]} of {want} `from=` lines and {got[1]} of {want} "
                                f"`status=sent` lines reached syslog ({r.get('lost_reports')} "
                                "`log lines lost` reports)")
        if r.get("cmd") == "exec" and "delivered" in r and r.get("delivered") != r.get("ok"):
            problems.append(f"{label}: {r.get('delivered')} of {r.get('ok')} shim messages reached the sink")
    if problems:
        lines.append("Checks that did not hold in this run:")
        lines.append("")
        lines.extend(f"- {p}" for p in problems)
    else:
        syslog_s = (", every message's two log lines received by syslog"
                    if any(r.get("measure") == "syslog" for r in rows) else "")
        lines.append("Checks: every message accepted, every accepted message delivered, no PUT rejected by the sink, "
                     f"every idle connection greeted, every shim run exited 0{syslog_s}.")
    lines.append("")
    lines.append(END)
    block = "\n".join(lines)

    try:
        with open(out, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = ("# Benchmarks\n\nRun `bench/run.sh` to measure again; it rewrites the table below.\n\n"
                + block + "\n" + text)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(block)


if __name__ == "__main__":
    main()
