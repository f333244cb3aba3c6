"""Jinja2 rendering of the service's HTML pages (templates in services/templates, autoescaped)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


@lru_cache(maxsize=1)
def env() -> Environment:
    return Environment(loader=PackageLoader("tiebreak.services", "templates"), autoescape=select_autoescape(["html"]))


def render(name: str, **ctx: Any) -> str:
    return env().get_template(name).render(**ctx)
