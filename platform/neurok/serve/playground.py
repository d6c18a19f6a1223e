"""The browser playground GET / answers: playground.html with three.js inlined, so the page loads nothing
but itself and then talks only to its own server (GET /version, POST /simulate?format=frames).

three.js is the npm package's single-file module build, vendored by scripts/build_three.py (`make three`)
into vendor/ (git-ignored); the page imports it from a Blob URL of the inlined text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from neurok.errors import NeurokError

TEMPLATE = "playground.html"
THREE = "vendor/three.module.min.js"
SLOT = "/*__THREE__*/"
CLOSES_SCRIPT = re.compile(rb"</script|<!--", re.IGNORECASE)  # would end or confuse the inline script


class PlaygroundMissing(NeurokError):
    """three.js has not been vendored into the installed package."""


def available() -> bool:
    return resources.files("neurok.serve").joinpath(THREE).is_file()


@functools.cache
def playground_page() -> bytes:
    """The page's bytes, built once per process."""
    here = resources.files("neurok.serve")
    if not available():
        raise PlaygroundMissing(
            f"the playground's three.js ({THREE}) is not built: run `make three` (needs npm) and restart"
        )
    three = here.joinpath(THREE).read_bytes()
    if CLOSES_SCRIPT.search(three):
        raise PlaygroundMissing(f"{THREE} holds '</script' or '<!--': it cannot be inlined as it is")
    template = here.joinpath(TEMPLATE).read_bytes()
    if template.count(SLOT.encode()) != 1:
        raise PlaygroundMissing(f"{TEMPLATE}: expected one {SLOT} slot")
    return template.replace(SLOT.encode(), three)
