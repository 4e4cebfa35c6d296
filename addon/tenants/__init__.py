"""Tenants: who a request belongs to, and the policy that follows from it.

    table.py     Tenant, TenantTable, TenantSource: the table (YAML, CSV, SQLite) and hot reload
    identify.py  identify(): header, API key, proxy user or body user -> tenant
    rules.py     compile rules: tenant attributes -> policy_ir (compile_policy)
    lookup.py    TenantLookup: tenants looked up on demand in a database, cached; open_tenants()
    store.py     TenantStore (one tenant at a time) and the SQLite one (mode=lookup)
    postgres.py  PostgresStore: postgresql://USER@HOST:PORT/DB?table=tenants

Import from the module that defines a name: this package re-exports nothing.
"""
