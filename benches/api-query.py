#!/usr/bin/env python3
"""GET /v1/recordings with 100 000 entries in the node database (issue 11), over HTTP
against the real (release) daemon.

The daemon creates its database on a first start; 100 000 recordings (1 000 streams x
100 half-hour files, 1 s apart across streams, as db::tests::node_db_at_scale) are then
inserted with Python's own sqlite3 (an independent writer of the same file), and the
daemon is started again. Timed, each N times over one keep-alive connection: one
stream's files (100 rows), and a one-hour range as pages of 1 000 (the first page, and a
walk of every page). Every answer is checked against the generator: the stream query
returns exactly its 100 keys, the walk exactly the files overlapping the hour.

  benches/api-query.py [--liverec target/release/liverec] [--rows 100000] [-n 200]
"""
import argparse, http.client, json, os, shutil, signal, sqlite3, statistics, subprocess, sys, tempfile, time

T0_MS = 1_700_000_000_000
HALF_HOUR_MS = 1_800_000


def start(binary, cfg, log):
    p = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    if "api=" not in line:
        p.kill()
        sys.exit(f"daemon did not start: {line!r}")
    api = [w for w in line.split() if w.startswith("api=")][0][4:]
    return p, api


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body)


def timed(conn, path, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        v = get(conn, path)
        out.append((time.perf_counter() - t) * 1000)
    return v, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--liverec", default="target/release/liverec")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("-n", type=int, default=200)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="api-query-", dir=os.environ.get("WORKDIR_BASE", "/tmp"))
    try:
        cfg = os.path.join(work, "liverec.toml")
        with open(cfg, "w") as f:
            f.write(f'[rtmp]\nlisten = "127.0.0.1:0"\n[api]\nlisten = "127.0.0.1:0"\n'
                    f'[storage]\nroot = "{work}/out"\n[spool]\ndir = "{work}/spool"\n'
                    f'[log]\nformat = "text"\nlevel = "warn"\n')
        log = open(os.path.join(work, "daemon.log"), "w")
        p, _ = start(a.liverec, cfg, log)
        stop(p)
        db = sqlite3.connect(os.path.join(work, "spool", ".liverec.db"))
        rows = []
        for i in range(a.rows):
            s, n = i % 1000, i // 1000
            start_ms = T0_MS + n * HALF_HOUR_MS + s * 1000
            rows.append((f"d/live/s{s:04}/{n:03}.flv", "flv", "d", "live", f"s{s:04}", "",
                         start_ms, start_ms + HALF_HOUR_MS, HALF_HOUR_MS, 1_000_000, 0))
        with db:
            db.executemany("INSERT INTO recordings (key, format, domain, app, stream, task_id, "
                           "start_ms, end_ms, duration_ms, size, expires) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.close()
        p, api = start(a.liverec, cfg, log)
        host, port = api.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        # One stream: exactly its files.
        v, stream_ms = timed(conn, "/v1/recordings?stream=s0042&page_size=1000", a.n)
        got = sorted(r["key"] for r in v["recordings"])
        want = sorted(r[0] for r in rows if r[4] == "s0042")
        assert got == want, (len(got), len(want))
        # One hour in the middle: files that end after `from` and start before `to`.
        frm = (T0_MS + (a.rows // 2000) * HALF_HOUR_MS) // 1000
        to = frm + 3600
        want = sorted(r[0] for r in rows if r[7] > frm * 1000 and r[6] < to * 1000)
        q = f"/v1/recordings?from={frm}&to={to}&page_size=1000"
        v, first_ms = timed(conn, q, a.n)
        assert len(v["recordings"]) == min(1000, len(want))
        walk_ms, got = [], []
        for _ in range(max(1, a.n // 10)):
            t = time.perf_counter()
            got, token = [], None
            while True:
                page = get(conn, q + (f"&page_token={token}" if token else ""))
                got += [r["key"] for r in page["recordings"]]
                token = page["next_page_token"]
                if token is None:
                    break
            walk_ms.append((time.perf_counter() - t) * 1000)
        assert sorted(got) == want and len(got) == len(set(got)), (len(got), len(want))
        stop(p)
        q50 = lambda xs: round(statistics.median(xs), 2)
        q95 = lambda xs: round(sorted(xs)[int(len(xs) * 0.95) - 1], 2)
        print(json.dumps({
            "rows": a.rows, "requests_each": a.n,
            "stream_100_rows_ms": {"p50": q50(stream_ms), "p95": q95(stream_ms)},
            "hour_first_page_1000_ms": {"p50": q50(first_ms), "p95": q95(first_ms), "overlapping": len(want)},
            "hour_all_pages_ms": {"p50": q50(walk_ms), "p95": q95(walk_ms), "pages": -(-len(want) // 1000)},
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
