"""/annotate: the blind annotation page (static HTML + JS calling `next` and `labels` with the user's token).

Open ``/annotate?run=RUN_ID#token=TOKEN`` (the token stays in the fragment: never sent in a URL to the server).
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from tiebreak.services.web import render

router = APIRouter(tags=["annotate"])


@router.get("/annotate", response_class=HTMLResponse)
def annotate_page() -> HTMLResponse:
    html, csp = _page()
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                       "Content-Security-Policy": csp, "X-Frame-Options": "DENY",
                                       "X-Content-Type-Options": "nosniff"})


@lru_cache(maxsize=1)
def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: only its own inline script and style (pinned by sha256), API
    calls to this origin, never framed (clickjacking: frame-ancestors 'none')."""
    html = render("annotate.html")
    scripts = " ".join(_sha256(m) for m in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(_sha256(m) for m in re.findall(r"<style>(.*?)</style>", html, re.S))
    csp = (f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src 'self' data:; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"
