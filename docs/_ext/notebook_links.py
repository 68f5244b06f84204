"""mkdocs hook: links from a notebook to a guide work on the site as they do in the repository.

A notebook links a guide as ``../docs/bbob.md`` (right from ``notebooks/`` on GitHub and in Jupyter).
mkdocs-jupyter copies links unchanged and mkdocs does not check them on notebook pages, so without this
hook they give a 404 on the site. Here each ``.md`` link of a notebook page is resolved against the
repository (then against ``docs/``) and rewritten to the URL of that page; a link to no page fails the
(strict) build.
"""

from __future__ import annotations

import posixpath
import re

from mkdocs.exceptions import PluginError

_MD_LINK = re.compile(r'href="(?![a-z]+:|#)([^"#]+\.md)(#[^"]*)?"')


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html

    def rewrite(match: re.Match) -> str:
        path = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match[1]))
        target = files.get_file_from_path(path.removeprefix("docs/"))
        if target is None:
            raise PluginError(f"{page.file.src_uri} links {match[1]}, which is no page of the site")
        return f'href="{target.url_relative_to(page.file)}{match[2] or ""}"'

    return _MD_LINK.sub(rewrite, html)
