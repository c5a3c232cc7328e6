"""A "Reliability" link in Flower's navigation bar, without changing Flower's templates.

A tornado output transform (``Application.add_transform``) adds one ``<li>`` to the first
navigation list of every complete HTML page Flower renders. Anything else (JSON, static files,
streamed or compressed responses, pages without that list) passes through untouched.
"""

from __future__ import annotations

from html import escape

from tornado import httputil
from tornado.web import OutputTransform

#: The opening tag of the primary navigation list in Flower 2.2's ``navbar.html``.
NAV_LIST = b'<ul class="app-nav navbar-nav">'


def nav_item(href: str, active: bool) -> bytes:
    css = "nav-link active" if active else "nav-link"
    current = ' aria-current="page"' if active else ""
    return (
        f'<li class="nav-item"><a class="{css}" href="{escape(href)}"{current} '
        f'data-reliable-nav="1">Reliability</a></li>'
    ).encode()


def add_link(body: bytes, href: str, active: bool) -> bytes:
    """``body`` with the link as the last item of the navigation list (unchanged if there is none)."""
    start = body.find(NAV_LIST)
    if start < 0:
        return body
    end = body.find(b"</ul>", start)
    if end < 0:
        return body
    return body[:end] + nav_item(href, active) + body[end:]


def nav_transform(href: str) -> type[OutputTransform]:
    """The transform class for a page at ``href`` (Flower's ``--url_prefix`` included)."""

    class ReliabilityNavLink(OutputTransform):
        def __init__(self, request: httputil.HTTPServerRequest) -> None:
            super().__init__(request)
            self.active = request.path == href

        def transform_first_chunk(
            self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
        ) -> tuple[int, httputil.HTTPHeaders, bytes]:
            html = headers.get("Content-Type", "").startswith("text/html")
            if not (finishing and html) or "Content-Encoding" in headers:
                return status_code, headers, chunk
            changed = add_link(chunk, href, self.active)
            if changed is not chunk and "Content-Length" in headers:
                headers["Content-Length"] = str(len(changed))
            return status_code, headers, changed

    return ReliabilityNavLink
