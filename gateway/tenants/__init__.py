"""Tenants: the hospitals, apps and merchants a platform serves, kept in the database (``gateway.store.tenants``),
managed by ``his-gateway hospitals|apps|merchants`` and the console's admin pages, and watched by every running
instance (``watcher``), which reloads what changed without a restart."""
