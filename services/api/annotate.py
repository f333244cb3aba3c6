"""/annotate: the blind annotation page (static HTML + JS calling `next` and `labels` with the user's token).

Open ``/annotate?run=RUN_ID#token=TOKEN`` (the token stays in the fragment: never sent in a URL to the server).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from services.web import render

router = APIRouter(tags=["annotate"])


@router.get("/annotate", response_class=HTMLResponse)
def annotate_page() -> HTMLResponse:
    return HTMLResponse(render("annotate.html"), headers={"Cache-Control": "no-store",
                                                          "Referrer-Policy": "no-referrer"})
