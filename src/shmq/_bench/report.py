"""The report of `shmq bench`: Markdown tables with ratios against the peers of the same run,
the machine (CPU model, cores, Python), a summary of shmq against those peers, and a PNG when
matplotlib is there. The project's own performance goals (goals()) are the source tree's
concern: printed only when asked (report(goals=True), `--goals`), never by default."""
from .peers import BASELINE
from .workloads import DICT, NUMPY, SIZES

_ZMQ = "pyzmq PUSH/PULL ipc://"


def fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f} "


def fmt_bytes(x):
    if x >= 1e9:
        return f"{x / 1e9:.2f} GB/s"
    return f"{x / 1e6:.1f} MB/s"


_fmt_rate, _fmt_bytes = fmt_rate, fmt_bytes


def goals(res):
    """[(goal, measured, met)] for the project's performance goals this run measured (the
    source tree's benchmarks/ scripts print them; a user's `shmq bench` does not)."""
    tp = res["throughput"]

    def row(workload, peer, p=1):
        return next((r for r in tp if r["workload"] == workload and r["peer"] == peer and r["producers"] == p), None)

    def rate(workload, peer, p=1):
        r = row(workload, peer, p)
        return r["msgs_per_s"] if r else None

    out = []
    s, mq, zq = rate("64 B", "shmq"), rate("64 B", BASELINE), rate("64 B", _ZMQ)
    if s and mq:
        m = f"{_fmt_rate(s)}msg/s, {s / mq:.1f}x mp.Queue" + (f", {s / zq:.1f}x pyzmq" if zq else "")
        out.append(("64 B bytes 1->1, one call per message: >= 3 M msg/s, >= 15x mp.Queue, >= 3x pyzmq", m,
                    s >= 3e6 and s >= 15 * mq and (zq is None or s >= 3 * zq)))
    b = rate("64 B", "shmq raw (put_many/get_many)")
    if b:
        out.append(("64 B raw put_many/get_many: >= 10 M msg/s", f"{_fmt_rate(b)}msg/s", b >= 10e6))
    d, dm = rate(DICT[0], "shmq"), rate(DICT[0], BASELINE)
    if d and dm:
        best = max((r["msgs_per_s"] for r in tp if r["workload"] == DICT[0] and r["family"] != "shmq"), default=0)
        out.append(("small dict 1->1: >= 3x mp.Queue and >= the best peer",
                    f"{d / dm:.1f}x mp.Queue, {d / best:.2f}x best peer", d >= 3 * dm and d >= best))
    m2, z2 = rate("64 B", "shmq", 2), rate("64 B", _ZMQ, 2)
    if m2 and z2:
        out.append(("2->2 processes, 64 B: >= 2x pyzmq", f"{m2 / z2:.1f}x pyzmq", m2 >= 2 * z2))
    lat = res["latency"]
    diff = [r for r in lat if r["cpus"] == "different CPUs"]
    sd = next((r for r in diff if r["peer"] == "shmq"), None)
    if sd:
        others = [r["p50_us"] for r in diff if r["family"] != "shmq"]
        ratio = min(others) / sd["p50_us"] if others else None
        out.append(("ping-pong p50, different CPUs: <= 4 us and >= 10x lower than every peer",
                    f"{sd['p50_us']:.1f} us" + (f", {ratio:.1f}x lower than the best peer" if ratio else ""),
                    sd["p50_us"] <= 4 and (ratio is None or ratio >= 10)))
    same = [r for r in lat if r["cpus"] == "same CPU"]
    ss = next((r for r in same if r["peer"] == "shmq"), None)
    sp = next((r for r in same if r["family"] == "os.pipe"), None)
    if ss and sp:
        out.append(("ping-pong, same CPU: no worse than a pipe",
                    f"p50 {ss['p50_us']:.1f} us vs pipe {sp['p50_us']:.1f} us", ss["p50_us"] <= sp["p50_us"]))
    for wl in ("1 MiB", NUMPY[0]):
        r = row(wl, "shmq")
        if r:
            mqr, ff = rate(wl, BASELINE), rate(wl, "faster-fifo")
            m = f"{_fmt_bytes(r['bytes_per_s'])}" + (f", {r['msgs_per_s'] / mqr:.1f}x mp.Queue" if mqr else "") + \
                (f", {r['msgs_per_s'] / ff:.2f}x faster-fifo" if ff else "")
            out.append((f"{wl} 1->1: >= 10 GB/s, >= 10x mp.Queue, >= faster-fifo", m,
                        r["bytes_per_s"] >= 10e9 and (not mqr or r["msgs_per_s"] >= 10 * mqr)
                        and (not ff or r["msgs_per_s"] >= ff)))
    idle = next((r for r in res["idle"] if r["peer"] == "shmq"), None)
    if idle:
        out.append(("idle blocked consumer: 0% CPU after the spin budget", f"{idle['cpu_pct']:.2f} % over "
                    f"{idle['wall_s']:.1f} s", idle["cpu_pct"] < 1.0))
    ack = res.get("ack") or []
    one = next((r for r in ack if r["producers"] == 1 and r["family"] == "shmq" and not r["batched"]), None)
    if one:
        piped = next((r for r in ack if r["producers"] == 1 and r["family"] == "Redis Streams" and r["batched"]), None)
        m = f"{_fmt_rate(one['msgs_per_s'])}msg/s" + (f", {one['msgs_per_s'] / piped['msgs_per_s']:.1f}x Redis "
                                                       "Streams pipelined" if piped else "")
        out.append(("at-least-once send+receive+ack 1->1: >= 1 M msg/s, >= 10x Redis Streams pipelined", m,
                    one["msgs_per_s"] >= 1e6 and (piped is None or one["msgs_per_s"] >= 10 * piped["msgs_per_s"])))
    return out


def _peers_line(res):
    """Which peers this run compared shmq with, and which it could not run (and why)."""
    ran = sorted({r["peer"] for key in ("throughput", "latency", "idle", "ack") for r in res.get(key) or []
                  if r.get("family") != "shmq"})
    why = {}
    for sk in res.get("skipped") or []:
        if sk["peer"] not in ran and not sk["peer"].startswith("shmq"):
            why.setdefault(sk["peer"], sk["reason"])
    line = ("- compared with the peers this run measured, on this machine: " + (", ".join(ran) if ran else "none")
            + "; every ratio below divides by one of them, never by figures from elsewhere")
    if why:
        line += "\n- not run, so not compared: " + "; ".join(f"{k}: {v}" for k, v in sorted(why.items()))
    return line


def summary(res):
    """One line per workload: shmq's best row against multiprocessing.Queue and the fastest
    other peer of the same run."""
    out = []
    keys = list(dict.fromkeys((r["workload"], r["producers"], r["consumers"]) for r in res.get("throughput") or []))
    for key in keys:
        rows = [r for r in res["throughput"] if (r["workload"], r["producers"], r["consumers"]) == key]
        mine = max((r for r in rows if r["family"] == "shmq"), key=lambda r: r["msgs_per_s"], default=None)
        if not mine:
            continue
        line = f"- {key[0]} {key[1]}->{key[2]}: {mine['peer']} {fmt_rate(mine['msgs_per_s'])}msg/s"
        if mine.get("vs_mp_queue"):
            line += f", {mine['vs_mp_queue']:.1f}x multiprocessing.Queue"
        if mine.get("best_peer") and mine.get("vs_best_peer") and mine["best_peer"] != BASELINE:
            line += f", {mine['vs_best_peer']:.2f}x {mine['best_peer']} (the fastest other peer run)"
        out.append(line)
    for mode in dict.fromkeys(r["cpus"] for r in res.get("latency") or []):
        rows = [r for r in res["latency"] if r["cpus"] == mode]
        mine = next((r for r in rows if r["family"] == "shmq"), None)
        others = [r for r in rows if r["family"] != "shmq"]
        if mine and others:
            best = min(others, key=lambda r: r["p50_us"])
            out.append(f"- ping-pong p50, {mode}: shmq {mine['p50_us']:.1f} us, {best['peer']} {best['p50_us']:.1f} us "
                       "(the lowest other peer run)")
    for r in res.get("ack") or []:
        if r["family"] == "shmq" and r.get("vs_redis"):
            out.append(f"- at-least-once {r['producers']}->{r['consumers']}: {r['peer']} "
                       f"{fmt_rate(r['msgs_per_s'])}msg/s, {r['vs_redis']:.1f}x Redis Streams in the same mode")
    return out


def report(res, goals_table=False):
    """The results as text tables (Markdown). goals_table=True adds the project's performance
    goals (the source tree's benchmark scripts ask for it; `shmq bench` alone never does)."""
    m = res["machine"]
    out = []
    out.append("# shmq bench" + (" (--quick)" if res.get("quick") else ""))
    out.append("")
    out.append(f"- CPU: {m['cpu_model']}, {m['cores']} cores (usable: {m['usable_cpus']})")
    out.append(f"- Python: {m['implementation']} {m['python']} on {m['platform']}")
    out.append(f"- load average (1/5/15 min) at start {m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}")
    out.append("- peers: " + "; ".join(f"{k} {v}" for k, v in m["peers"].items()))
    out.append("- figures: median of the runs; x-ratios are against multiprocessing.Queue and against the "
               "fastest non-shmq peer of the same workload, measured in the same run")
    out.append(_peers_line(res))
    for line in res.get("left_out") or []:
        out.append(f"- left out: {line}")
    out.append("")
    lines = summary(res)
    if lines:
        out.append("## shmq against the peers of this run")
        out.append("")
        out.extend(lines)
        out.append("")
    groups = []
    for r in res["throughput"]:
        key = (r["workload"], r["producers"], r["consumers"])
        if key not in groups:
            groups.append(key)
    if groups:
        out.append("## Throughput")
        out.append("")
        out.append("| workload | peer | msg/s | MB/s | x mp.Queue | x best peer |")
        out.append("|---|---|---:|---:|---:|---:|")
        for key in groups:
            for r in [x for x in res["throughput"] if (x["workload"], x["producers"], x["consumers"]) == key]:
                vm = f"{r['vs_mp_queue']:.2f}" if r["vs_mp_queue"] else "-"
                vb = f"{r['vs_best_peer']:.2f}" if r["vs_best_peer"] else "-"
                out.append(f"| {key[0]} {key[1]}->{key[2]} | {r['peer']} | {_fmt_rate(r['msgs_per_s'])} | "
                           f"{_fmt_bytes(r['bytes_per_s'])} | {vm} | {vb} |")
        out.append("")
        bests = {}
        for r in res["throughput"]:
            if r.get("best_peer"):
                bests[f"{r['workload']} {r['producers']}->{r['consumers']}"] = r["best_peer"]
        if bests:
            out.append("best non-shmq peer per workload: " + "; ".join(f"{k}: {v}" for k, v in bests.items()))
            out.append("")
    if res["latency"]:
        out.append("## Ping-pong round trip, 64 B (microseconds)")
        out.append("")
        out.append("| CPUs | peer | round trips | p50 | p99 | p99.9 | mp.Queue p50 / p50 |")
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for mode in dict.fromkeys(r["cpus"] for r in res["latency"]):
            rows = [r for r in res["latency"] if r["cpus"] == mode]
            for r in rows:
                ratio = f"{r['vs_mp_queue']:.1f}" if r.get("vs_mp_queue") else "-"
                out.append(f"| {mode} {r['cpu_pair']} | {r['peer']} | {r['round_trips']} | {r['p50_us']:.1f} | "
                           f"{r['p99_us']:.1f} | {r['p999_us']:.1f} | {ratio} |")
        out.append("")
    if res["idle"]:
        out.append("## CPU used by a consumer blocked in get() on an empty queue")
        out.append("")
        out.append("| peer | wall s | CPU s | CPU % |")
        out.append("|---|---:|---:|---:|")
        for r in res["idle"]:
            out.append(f"| {r['peer']} | {r['wall_s']:.2f} | {r['cpu_s']:.3f} | {r['cpu_pct']:.2f} |")
        out.append("")
    g = goals(res) if goals_table else []
    if g:
        out.append("## Against the project's performance goals (this run; --goals)")
        out.append("")
        out.append("| goal | measured | met |")
        out.append("|---|---|---|")
        for goal, measured, ok in g:
            out.append(f"| {goal} | {measured} | {'yes' if ok else 'NO'} |")
        out.append("")
    if res.get("ack"):
        out.append("## At-least-once: send + receive + ack, 64 B (each message checked to arrive exactly once)")
        out.append("")
        out.append("multiprocessing.Queue is at-most-once (put/get): the baseline, not a peer of the same guarantee. "
                   "x Redis divides by Redis Streams in the same mode: one call per message by unpipelined "
                   "XADD / XREADGROUP 1 + XACK, batched by pipelined XADD 64 / XREADGROUP 64 + XACK.")
        out.append("")
        out.append("| workload | peer | msg/s | x Redis | x mp.Queue |")
        out.append("|---|---|---:|---:|---:|")
        for r in res["ack"]:
            xr = f"{r['vs_redis']:.2f}" if r.get("vs_redis") else "-"
            xm = f"{r['vs_mp_queue']:.2f}" if r.get("vs_mp_queue") else "-"
            out.append(f"| {r['producers']}->{r['consumers']} | {r['peer']} | {_fmt_rate(r['msgs_per_s'])} | {xr} | "
                       f"{xm} |")
        out.append("")
    if res["skipped"]:
        out.append("## Skipped")
        out.append("")
        seen = set()
        for s in res["skipped"]:
            key = (s["peer"], s["reason"])
            if key in seen:
                continue
            seen.add(key)
            out.append(f"- {s['peer']}: {s['workload']}: {s['reason']}")
        out.append("")
    out.append(f"total time {res.get('elapsed_s', 0):.1f} s")
    return "\n".join(out)


def plot(res, path):
    """Throughput by message size and the latency CDF as one PNG; False if matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ack = res.get("ack") or []
    fig, axes = plt.subplots(1, 3 if ack else 2, figsize=(21 if ack else 14, 5.5))
    a1, a2 = axes[0], axes[1]
    for ax in axes:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)   # > 10 series: no repeated colours
    sizes = {label: spec[1] for label, spec in SIZES}
    by_peer = {}
    for r in res["throughput"]:
        if r["workload"] in sizes and r["producers"] == 1:
            by_peer.setdefault(r["peer"], []).append((sizes[r["workload"]], r["bytes_per_s"] / 1e9))
    for peer, pts in by_peer.items():
        pts.sort()
        a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer,
                linewidth=2.5 if peer.startswith("shmq") else 1.2)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("message size (bytes)")
    a1.set_ylabel("GB/s (1 producer -> 1 consumer process)")
    a1.set_title("throughput by message size")
    if a1.lines:
        a1.legend(fontsize=7)
    a1.grid(True, which="both", alpha=0.3)
    mode = "different CPUs" if any(r["cpus"] == "different CPUs" for r in res["latency"]) else "same CPU"
    for r in res["latency"]:
        if r["cpus"] != mode:
            continue
        cdf = r["cdf_us"]
        a2.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=r["peer"],
                linewidth=2.5 if r["family"] == "shmq" else 1.2)
    a2.set_xscale("log")
    a2.set_xlabel("round trip, microseconds")
    a2.set_ylabel("fraction of round trips")
    a2.set_title(f"ping-pong 64 B, {mode}: latency CDF")
    if a2.lines:
        a2.legend(fontsize=7)
    a2.grid(True, which="both", alpha=0.3)
    if ack:
        a3 = axes[2]
        names = list(dict.fromkeys(r["peer"] for r in ack))
        shapes = sorted({(r["producers"], r["consumers"]) for r in ack})
        width = 0.8 / max(1, len(shapes))
        for k, pc in enumerate(shapes):
            rates = {r["peer"]: r["msgs_per_s"] for r in ack if (r["producers"], r["consumers"]) == pc}
            a3.barh([i + k * width for i in range(len(names))], [rates.get(n, 0) for n in names], height=width,
                    label=f"{pc[0]}->{pc[1]}")
        a3.set_yticks([i + width * (len(shapes) - 1) / 2 for i in range(len(names))])
        a3.set_yticklabels([n.replace(" (", "\n(") for n in names], fontsize=7)
        a3.invert_yaxis()
        a3.set_xscale("log")
        a3.set_xlabel("messages per second")
        a3.set_title("at-least-once send + receive + ack, 64 B")
        a3.legend(fontsize=7)
        a3.grid(True, which="both", axis="x", alpha=0.3)
    m = res["machine"]
    fig.suptitle(f"shmq bench - {m['cpu_model']}, {m['cores']} cores, Python {m['python']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
