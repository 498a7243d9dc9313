"""The HTTP layer: the app factory, routes, request and response schemas, authentication, limits,
metrics and the one table of errors to status codes. It imports no torch, faiss or scipy: it
knows the application layer (service/application/) only by its interfaces."""
