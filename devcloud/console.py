"""devcloud's web console: static files and the change stream, served by the REST API.

Theory of operation. The console is one page (``devcloud/web/index.html``, plain
JavaScript and CSS, no build step) that the REST server hands out under ``/console/``.
The page holds no state of its own beyond what it reads: it calls the same REST routes
as :class:`~devcloud.client.DevCloudClient` and the CLI (``/devices``, ``/twins/{id}``,
``/registrations/{id}/history``, ``/enrollmentGroups`` ...), long-polls ``/telemetry``
for its charts, and listens to ``/events`` -- server-sent events that carry only the
revision of :class:`~devcloud.activity.ChangeFeed` -- to know when to read again. So
the REST API stays the one source of truth and the console cannot drift from it.

Only the files listed in :data:`FILES` are served, from the package, never a path taken
from the request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from importlib import resources

from devcloud.activity import ChangeFeed

#: URL name -> (file inside devcloud/web, content type).
FILES: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "uPlot.LICENSE": ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
}
#: Changes closer together than this go out as one event (a busy fleet stays readable).
COALESCE_S = 0.25
#: A comment line this often keeps proxies and the browser from timing the stream out.
KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class StaticFile:
    """One console file, read from the installed package."""

    body: bytes
    content_type: str


def static_file(name: str) -> StaticFile | None:
    """The console file served as ``/console/{name}``, or None if there is none."""
    entry = FILES.get(name)
    if entry is None:
        return None
    path, content_type = entry
    body = resources.files("devcloud").joinpath("web", *path.split("/")).read_bytes()
    return StaticFile(body, content_type)


async def stream_changes(
    changes: ChangeFeed, writer: asyncio.StreamWriter, *, after: int | None = None
) -> None:
    """Write ``event: change`` with the revision each time it moves, until the client goes.

    The first event goes out at once (the page then reads everything); later ones at
    most every :data:`COALESCE_S`.
    """
    writer.write(b"retry: 2000\n\n")
    seen = -1 if after is None else after
    while not writer.is_closing():
        revision = await changes.wait(seen, KEEPALIVE_S)
        if revision == seen:
            writer.write(b": keep-alive\n\n")
        else:
            seen = revision
            data = json.dumps({"revision": revision})
            writer.write(f"event: change\ndata: {data}\n\n".encode())
        await writer.drain()
        await asyncio.sleep(COALESCE_S)
