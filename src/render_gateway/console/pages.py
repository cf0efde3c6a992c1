"""The console's pages as server-rendered shells: layout, navigation and each page's skeleton.

Pure: no I/O but reading the package's own templates. The data is fetched by the page's script
from the API (console/static/*.js), so a page is the same HTML for every caller and may be
cached; what a caller may see is decided by the API, never here.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from importlib import resources

from render_gateway import __version__

STATIC_PREFIX = "/console/static"


@dataclass(frozen=True)
class Page:
    slug: str  # the path under /console/
    title: str
    script: str  # the page's module under static/
    admin_only: bool = False  # hidden from customers' navigation (the API refuses them anyway)
    in_nav: bool = True


PAGES: tuple[Page, ...] = (
    Page("overview", "Overview", "overview.js", admin_only=True),
    Page("backends", "Backends", "backends.js", admin_only=True),
    Page("jobs", "Jobs", "jobs.js"),
    Page("usage", "Usage", "usage.js"),
    Page("integrity", "Billing integrity", "integrity.js"),
    Page("capacity", "Capacity", "capacity.js", admin_only=True),
)
SIGN_IN = Page("", "Sign in", "signin.js", in_nav=False)
JOB = Page("job", "Job", "job.js", in_nav=False)
BY_SLUG = {page.slug: page for page in PAGES}


@cache
def _template(name: str) -> str:
    return resources.files("render_gateway.console").joinpath("templates", name).read_text()


def render(page: Page) -> str:
    """The page's HTML: the layout around its own template, nothing caller-specific."""
    nav = "".join(
        f'<a href="/console/{p.slug}" data-page="{p.slug}"'
        f"{' data-admin-only' if p.admin_only else ''}>{html.escape(p.title)}</a>"
        for p in PAGES
        if p.in_nav
    )
    body = _template(f"{page.script.removesuffix('.js')}.html")
    return (
        _template("layout.html")
        .replace("{{title}}", html.escape(page.title))
        .replace("{{static}}", STATIC_PREFIX)
        .replace("{{version}}", html.escape(__version__))
        .replace("{{nav}}", nav if page.in_nav or page is JOB else "")
        .replace("{{page}}", html.escape(page.slug or "signin"))
        .replace("{{script}}", f"{STATIC_PREFIX}/{page.script}")
        .replace("{{body}}", body)
    )
