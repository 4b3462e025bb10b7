"""The replica's ASGI stages, each its own pure-ASGI middleware; ``http.app`` stacks them in order."""
