"""HTTP layer: wire models, validation, error mapping, routes and the Serve ingress."""
