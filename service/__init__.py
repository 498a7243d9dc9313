"""The HTTP service, its settings and the `ragserve` command line."""
