"""The telemetry parts of the addon, with mitmproxy's test helpers: GET /metrics where it is
answered (and where it is not), what the scrape reads from the sidecar, and options."""

from __future__ import annotations

from pathlib import Path

from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from routecar.mitm.router import Router
from tests.test_router_hooks import configured, flow, lookup_table, run


def scrape(router: Router, host: str = "routecar.local", mode: str = "regular",
           accept: str = "") -> tuple[int, dict[str, float], str]:
    f = flow(host=host, path="/metrics", method="GET", body=b"", port=80, scheme="http", mode=mode,
             headers=[("accept", accept)] if accept else [])
    run(lambda: router.request(f))
    assert f.response is not None
    text = f.response.get_text() or ""
    if f.response.status_code != 200 or "openmetrics" in f.response.headers["content-type"]:
        return f.response.status_code, {}, text
    found = {s.name + str(sorted(s.labels.items())): s.value
             for fam in text_string_to_metric_families(text) for s in fam.samples}
    return f.response.status_code, found, text


def test_metrics_through_the_proxy_and_in_reverse_mode(tmp_path: Path):
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router)
        status, found, _ = scrape(router)
        assert status == 200 and "routecar_catalog_info" + str([("version", router.engine.catalog.version)]) in found
        status, found, _ = scrape(router, host="127.0.0.1", mode="reverse:http://127.0.0.1:9")
        assert status == 200 and found
        status, _, text = scrape(router, accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and text.rstrip().endswith("# EOF")


def test_metrics_on_a_provider_host_is_not_ours():
    """Through the proxy, only routecar.local answers /metrics: a provider's own path is untouched."""
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router)
        f = flow(host="api.openai.com", path="/metrics", method="GET", body=b"", headers=[])
        run(lambda: router.request(f))
        assert f.response is None


def test_metrics_off_is_404():
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router, routecar_metrics=False)
        status, _, text = scrape(router)
        assert status == 404 and "routecar_metrics=false" in text


def test_a_tenant_database_reports_whether_it_is_up(tmp_path: Path):
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router, routecar_tenants=lookup_table(tmp_path))
        status, found, _ = scrape(router)
        assert status == 200 and found["routecar_tenant_database_up[]"] == 1
        assert not any(k.startswith("routecar_config_reloads_total[('source', 'tenants')") for k in found)


def test_telemetry_survives_reconfiguration():
    """Counters live as long as the sidecar: an unrelated option change keeps them."""
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router)
        first = router.telemetry.current
        tctx.configure(router, routecar_max_body=1024)
        assert router.telemetry.current is first
        tctx.configure(router, routecar_metrics_tenant_label=True)
        new = router.telemetry.current
        assert new is not first and new is not None and new.metrics is not None and new.metrics.tenant_label
