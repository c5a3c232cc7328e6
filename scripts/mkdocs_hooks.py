"""mkdocs hook: a link from a page to a repository file outside docs/ (``../bench/README.md``)
works on GitHub but has no page on the site; there it becomes plain text.

A link to a file that does not exist is left alone, so ``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    here = (docs / page.file.src_uri).parent

    def replace(match: re.Match[str]) -> str:
        target = (here / match.group(2)).resolve()
        if target.is_relative_to(docs) or not target.exists():
            return match.group(0)
        return match.group(1)

    return _LINK.sub(replace, markdown)


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Fail the strict build when a name of ``celery_reliable.__all__`` is missing from the API page."""
    if page.file.src_uri == "api.md":
        import logging

        import celery_reliable

        documented = set(re.findall(r"^::: celery_reliable\.(?:\w+\.)*(\w+)\s*$", page.markdown or "", re.M))
        missing = sorted(set(celery_reliable.__all__) - documented)
        if missing:
            logging.getLogger("mkdocs.hooks").warning(
                "api.md documents no '::: celery_reliable.<name>' block for %s; add one per public name", missing
            )
    return output
