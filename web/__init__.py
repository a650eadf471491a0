"""The gliomaseg web dashboard and REST API (FastAPI): jobs, viewer, uploads, metrics.

``create_app(settings)`` in :mod:`web.app` builds the application; ``gliomaseg web`` serves it
alone and ``gliomaseg serve`` serves it beside the node and the worker.
"""
