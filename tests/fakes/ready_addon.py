"""mitmproxy addon script for tests and benchmarks: announce the bound port.

Load it with ``mitmdump -s tests/fakes/ready_addon.py -p 0``. Once the proxy
servers listen (mitmproxy's ``running`` hook fires after they are bound), it
writes ``{"host": ..., "port": ..., "addrs": [[host, port], ...]}`` to the file
named by the ``ROUTECAR_READY_FILE`` environment variable, atomically (temp
file, then rename), so a poller never reads a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mitmproxy import ctx

ENV_VAR = "ROUTECAR_READY_FILE"


class ReadyFile:
    def running(self) -> None:
        target = os.environ.get(ENV_VAR)
        if not target:
            return
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = [[str(a[0]), int(a[1])] for a in proxyserver.listen_addrs()]
        if not addrs:
            return  # nothing bound (e.g. --no-server): leave the poller waiting
        # Prefer the IPv4 loopback address when the proxy bound several.
        host, port = next((a for a in addrs if a[0] == "127.0.0.1"), addrs[0])
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"  # a wildcard bind is reachable on loopback
        path = Path(target)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"host": host, "port": port, "addrs": addrs}))
        os.replace(tmp, path)


addons = [ReadyFile()]
