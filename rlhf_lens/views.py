"""HTML and figure helpers shared by analyses and reports: one Jinja2 environment with autoescape."""

from __future__ import annotations

import base64
import io

import jinja2

ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
"""The only Jinja2 environment: every string that reaches HTML is escaped."""


def render(template: str, **context) -> str:
    """Render a template string with autoescaping."""
    return ENVIRONMENT.from_string(template).render(**context)


def figure_data_uri(figure) -> str:
    """A matplotlib figure as a PNG data URI, so reports load nothing from the network."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
