"""FastJSONResponse: JSON bodies through orjson, numpy arrays included.

The hot routes answer with plain dicts holding floats and embeddings. Starlette's JSONResponse
runs them through the standard library's encoder, which took 0.45-1 ms to turn one 384-float
embedding into text (after a ``tolist()`` copy); orjson takes 0.03-0.07 ms and writes a float32
array as is (the shortest text that reads back as the same float32), with no copy into Python
floats.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class FastJSONResponse(Response):
    """``application/json`` rendered by orjson (numpy arrays must be C-contiguous)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)
