"""The HTTP shell: the only package that imports FastAPI and Starlette.

Routes validate, call the services and shape JSON; middlewares run the request's stages in one
place (``app.py``); ``ingress.py`` and ``fused.py`` are the Serve deployments that serve the app.
"""
