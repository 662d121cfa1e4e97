"""`async with Client(...) as client:` for every provider client: it closes its HTTP pool on exit."""
from __future__ import annotations

from typing import Any


class AsyncClosing:
    """Subclasses implement `aclose()`; entering returns the client itself."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
