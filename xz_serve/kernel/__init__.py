"""The ground floor: request context, deadlines, errors, shared data shapes and the Redis factory.

Nothing here imports another xz_serve package, FastAPI, Starlette or Ray.
"""
