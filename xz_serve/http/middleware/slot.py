"""AnswerSlot: a counted slot that comes back with the answer's last body message.

The admission gate and the per-caller cap count requests until their answer ends. "Ends" is the
last body message, not the return of the app inside: the layers within still end spans and record
metrics after it, and a client that already has its answer may have sent its next request, which
must find the slot free (a closed-loop client at exactly the bound was refused now and then). An
error or a disconnect, with no last body message, frees the slot when the request ends.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Send


class AnswerSlot:
    """Calls ``release`` once: at the answer's last body message, or at ``free()``, whichever is first."""

    __slots__ = ("_release", "held")

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self.held = True

    def free(self) -> None:
        """Give the slot back, unless the answer already did."""
        if self.held:
            self.held = False
            self._release()

    def sending(self, send: Send) -> Send:
        """``send``, freeing the slot as the last body message goes out."""

        async def send_and_free(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.free()
            await send(message)

        return send_and_free
