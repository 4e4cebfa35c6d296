"""Traces: what routecar keeps of every governed request, in local SQLite.

    record.py   TraceRecord: what the addon fills in for one request
    rows.py     how a record becomes rows (no_log and scrubbing enforced), and back
    store.py    TraceStore: schema, migrations, write, prune, query, get
    writer.py   TraceWriter: a background thread feeding a TraceStore
    process.py  ProcessTraceWriter: the same, in a child process

Import from the module that defines a name (`from routecar.traces.store import
TraceStore`): this package re-exports nothing.
"""
