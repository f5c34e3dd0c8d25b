"""Run a command and report its wall time, peak RSS split into anonymous and
file-backed memory, and bytes read from disk, as one JSON line on stdout.

    python3 bench/measure.py [--cap-gb 8] -- CMD ARGS...

Polls /proc/PID/status (VmHWM, RssAnon, RssFile) and /proc/PID/io
(read_bytes) every 20 ms; the kernel keeps only the peak of the total
(VmHWM), so the anonymous and file-backed peaks are the largest values seen
by polling. A process whose RSS passes --cap-gb is killed (the machine is
shared), and the JSON says so."""
import json
import os
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
cap_gb = 8.0
if args[:1] == ["--cap-gb"]:
    cap_gb, args = float(args[1]), args[2:]
if args[:1] == ["--"]:
    args = args[1:]


def status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "read_bytes":
                    out[k] = int(v)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


start = time.perf_counter()
proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0, "read_bytes": 0}
killed = False
while proc.poll() is None:
    s = status(proc.pid)
    for k in peak:
        peak[k] = max(peak[k], s.get(k, 0))
    if s.get("VmRSS", 0) > cap_gb * 2**30 and not killed:
        proc.send_signal(signal.SIGKILL)
        killed = True
    time.sleep(0.02)
wall = time.perf_counter() - start
stderr = proc.stderr.read().decode(errors="replace").strip().splitlines()
print(json.dumps({
    "wall_s": round(wall, 3),
    "exit": proc.returncode,
    "killed_at_cap_gb": cap_gb if killed else None,
    "peak_rss_gib": round(peak["VmHWM"] / 2**30, 3),
    "peak_anon_gib": round(peak["RssAnon"] / 2**30, 3),
    "peak_file_gib": round(peak["RssFile"] / 2**30, 3),
    "read_gb": round(peak["read_bytes"] / 1e9, 3),
    "last_stderr": stderr[-1] if stderr else "",
    "timings": next((l for l in stderr if l.startswith("timings:")), ""),
}))
