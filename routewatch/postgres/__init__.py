"""The embedded PostgreSQL server ``routewatch run`` starts when no database URL is given,
its supervision (restart with backoff) and the file locks on its data directory."""
