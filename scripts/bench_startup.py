#!/usr/bin/env python3
"""Start-up cost of the sidecar: time to ready and CPU spent until then.

    .venv/bin/python scripts/bench_startup.py [--runs 7]

For each case it starts the proxy `--runs` times (loopback fake providers, a CA made
once beforehand, an ephemeral port) and waits for its ready file (the address written
once the proxy listens). "ready s" is the wall time from spawn to that file, "CPU s"
the child's utime+stime read from /proc at that moment, "stop s" the time from SIGTERM
to exit; medians over the runs. Each proxy is stopped before the next one starts. Also prints the CPU of a bare
`import routecar.mitm.router, routecar.mitm.master` and its slowest imports
(`python -X importtime`). Prints Markdown; bounded by count and a timeout per start.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mitmproxy.certs import CertStore  # noqa: E402

from tests.fakes import MITMDUMP, READY_ADDON, FakeFleet, ProxyProcess  # noqa: E402
from tests.fakes.config import write_loopback_providers  # noqa: E402

ADDON = str(ROOT / "addon" / "mitm" / "addon.py")
PROVIDERS = ("openai", "anthropic", "mistral", "google", "azure", "groq", "deepseek", "scaleway")
IMPORT = "import routecar.mitm.router, routecar.mitm.master"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime


def start_once(argv: list[str], work: Path, env: dict[str, str]) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    proc = ProxyProcess.start(argv, work, env=env, ready_timeout=60)
    ready = time.perf_counter() - t0
    cpu = cpu_s(proc.pid)
    t1 = time.perf_counter()
    code = proc.stop()
    stop = time.perf_counter() - t1
    if code != 0:
        raise SystemExit(f"{argv[:4]} exited with {code}:\n{proc.log_tail()}")
    return ready, cpu, stop


def import_cpu(runs: int) -> tuple[float, list[tuple[int, str]]]:
    cpus = []
    for _ in range(runs):
        before = os.times()
        subprocess.run([sys.executable, "-c", IMPORT], check=True, cwd=ROOT)
        after = os.times()
        cpus.append(after.children_user - before.children_user + after.children_system - before.children_system)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT], capture_output=True, text=True,
                         check=True, cwd=ROOT).stderr
    top = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 5:   # top-level and second-level packages only
            top.append((int(m.group(1)), m.group(3)))
    return statistics.median(cpus), sorted(top, reverse=True)[:12]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeFleet(PROVIDERS) as fleet:
        tmp_path = Path(tmp)
        home = tmp_path / "home"
        CertStore.from_store(home / "mitmproxy", "mitmproxy", 2048)
        confdir = home / "mitmproxy"
        providers, keys = write_loopback_providers(fleet.url, tmp_path / "providers.yaml")
        env = {"ROUTECAR_HOME": str(home), **keys}
        traces = str(tmp_path / "traces.db")
        run = [sys.executable, "-m", "routecar.cli", "run", "--listen", "127.0.0.1:0",
               "--providers", str(providers), "--traces", traces]
        cases = {
            "routecar run (regular)": run,
            "routecar run --mode reverse": run + ["--mode", "reverse:http://127.0.0.1:9"],
            "mitmdump -s addon.py": [MITMDUMP, "-q", "--listen-host", "127.0.0.1", "-p", "0",
                                     "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy",
                                     "-s", READY_ADDON, "-s", ADDON, "--set", f"routecar_providers={providers}",
                                     "--set", f"routecar_traces={traces}"],
        }
        load = os.getloadavg()[0]
        print(f"Sidecar start-up, median of {args.runs} starts per case (load average {load:.2f} at start)\n")
        print("| case | ready s (median) | ready s (min) | CPU s to ready (median) | stop s (median) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, argv in cases.items():
            results = [start_once(argv, tmp_path / "work", env) for _ in range(args.runs)]
            ready, cpu, stop = ([r[i] for r in results] for i in range(3))
            print(f"| {name} | {statistics.median(ready):.2f} | {min(ready):.2f} | {statistics.median(cpu):.2f} "
                  f"| {statistics.median(stop):.2f} |")
    cpu, top = import_cpu(args.runs)
    print(f"\n`python -c \"{IMPORT}\"`: {cpu:.2f} s CPU (median of {args.runs}); slowest imports (cumulative):\n")
    print("| module | ms |")
    print("| --- | ---: |")
    for us, name in top:
        print(f"| {name} | {us / 1000:.0f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
