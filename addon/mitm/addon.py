"""Script entry for stock mitmproxy: `mitmdump -s addon/mitm/addon.py` (or mitmweb -s).

mitmproxy loads scripts outside the package, so this file only imports the
addon from the installed `routecar` package (routecar must be installed in
mitmproxy's Python environment).
"""

from routecar.mitm.router import Router

addons = [Router()]
