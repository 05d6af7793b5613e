"""Chorus on a Ray Serve cluster (`chorus serve --ray --workers N`): an ingress running the usual FastAPI app
(auth, limits, decoding, OpenAI and operator APIs) and N worker replicas, each with the backbone, an adapter
cache and Chorus's own mixed-adapter batching, on a shared adapter store. Requests reach workers through an
adapter-affinity router. Needs the optional extra `chorus-asr[ray]`."""
