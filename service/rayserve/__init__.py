"""Ray Serve: N replicas of the same app (`ragserve serve --engine ray --replicas N`, or
`serve run deploy/ray/serve.yaml`); see deploy/ray/README.md.

A sharded version can be served as shard groups behind a router (`--shard-groups G`,
`deploy/ray/sharded.yaml`): `shards` (docs/shard_router.md).

Ray is an optional extra (`pip install 'ragserve[ray]'`): only `deployment`, `engine` and `shards` import it,
and nothing outside this package imports them at module level. `live` (the settings a
`user_config` changes in place) does not import Ray.
"""
