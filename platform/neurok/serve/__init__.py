"""`neurok serve`: a registered simulator package behind HTTP, with its prepared meshes kept.

The top of the data flow: it uses track (the package), eval (meshes) and the shared modules; only the
CLI imports it.

cache       prepared meshes by mesh hash, the few last used kept (LRU), thread-safe
limits      what one request may ask for (vertices, frames, body bytes)
service     the loaded package, its identity, the limits and the cache: what a simulation request runs
protocol    a request's body and query as the package's input and params; a rollout as JSON, NPZ or frames
server      the stdlib ThreadingHTTPServer: GET / (the playground), /health, /version, POST /simulate
playground  the browser page GET / answers (playground.html with vendor/'s three.js inlined)
"""
