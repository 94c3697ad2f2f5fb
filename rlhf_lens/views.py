"""HTML and figure helpers shared by analyses and reports: one Jinja2 environment with autoescape.

Every piece of HTML rlhf-lens writes comes out of `render` or `render_template` here, so
every string from a run (prompts, completions, labeler names, config values) is escaped.
The HTML uses classes only (no inline `style=` attributes), so a report can carry a strict
Content-Security-Policy: the one stylesheet, `STYLESHEET`, is allowed by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from markupsafe import Markup, escape


def _finalize(value: Any) -> Any:
    """Escape text before it is placed, and also write U+2028 / U+2029 as character references: they end a line
    in JavaScript string literals, so no inline data can be broken by them."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return Markup(str(escape(value)).replace("\u2028", "&#x2028;").replace("\u2029", "&#x2029;"))


ENVIRONMENT = jinja2.Environment(
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    finalize=_finalize,
    loader=jinja2.PackageLoader("rlhf_lens", "views_templates"),
)
"""The only Jinja2 environment: every string that reaches HTML is escaped."""

HEAT_LEVELS = 6
"""Colour steps on each side of zero in a token heatmap (classes h-n6 .. h-0 .. h-p6)."""


def render(template: str, **context: Any) -> Markup:
    """Render a template string with autoescaping; the output is safe to embed in other templates."""
    return Markup(ENVIRONMENT.from_string(template).render(**context))


def render_template(name: str, **context: Any) -> Markup:
    """Render a template file of rlhf_lens/views_templates/ with autoescaping."""
    return Markup(ENVIRONMENT.get_template(name).render(**context))


# --------------------------------------------------------------------------- figures


def figure_data_uri(figure) -> str:
    """A matplotlib figure as a PNG data URI, so reports load nothing from the network."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_html(figure, alt: str) -> Markup:
    """An <img> of a matplotlib figure, inlined as a data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    uri = figure_data_uri(figure)
    plt.close(figure)
    return render('<figure class="plot"><img src="{{ uri }}" alt="{{ alt }}"></figure>', uri=uri, alt=alt)


def new_figure(width: float = 6.0, height: float = 3.2, *, ncols: int = 1, nrows: int = 1):
    """(figure, axes) from a non-interactive backend: what analyses draw on when no `ax` is given."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False if nrows * ncols > 1 else True)


# --------------------------------------------------------------------------- tables


def format_value(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits, NaN and None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return format_value(value.item())
    return str(value)


TABLE = """<div class="table-wrap"><table>
{%- if caption %}<caption>{{ caption }}</caption>{% endif -%}
<thead><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>{% if more %}<p class="note">… and {{ more }} more rows (all of them are in the result's DataFrame).</p>{% endif %}</div>"""


def table(df, *, columns: Sequence[str] | None = None, max_rows: int | None = 50, caption: str | None = None) -> Markup:
    """A DataFrame as an escaped HTML table (cells through `format_value`)."""
    columns = list(columns) if columns is not None else [str(c) for c in df.columns]
    shown = df if max_rows is None else df.head(max_rows)
    rows = [[format_value(v) for v in record] for record in shown[columns].itertuples(index=False, name=None)]
    return render(TABLE, columns=columns, rows=rows, caption=caption, more=len(df) - len(shown))


def details(summary: str, body: Markup) -> Markup:
    """A collapsed block that opens on click, without JavaScript (<details>); `body` is Markup from `render` (a plain
    str is escaped)."""
    return render("<details><summary>{{ summary }}</summary>{{ body }}</details>", summary=summary, body=body)


def key_values(pairs: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> Markup:
    """A small two-column table of labelled values."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    return render(
        '<dl class="kv">{% for k, v in items %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>',
        items=[(k, format_value(v)) for k, v in items],
    )


# --------------------------------------------------------------------------- token heatmaps


def heat_class(value: float, scale: float) -> str:
    """The colour class of `value` on a scale symmetric around zero: h-n6 (most negative) .. h-0 .. h-p6."""
    if not math.isfinite(value) or scale <= 0:
        return "h-0"
    level = min(HEAT_LEVELS, math.ceil(abs(value) / scale * HEAT_LEVELS - 1e-9))
    if level == 0:
        return "h-0"
    return f"h-{'p' if value > 0 else 'n'}{level}"


HEATMAP = """<span class="tokens">{% for text, cls, tip in tokens %}<span class="tok {{ cls }}" title="{{ tip }}">{{ text }}</span>{% endfor %}</span>"""


def token_heatmap(tokens: Sequence[str], values: Sequence[float], *, label: str, scale: float | None = None) -> Markup:
    """Tokens coloured by value (blue below zero, red above, symmetric scale); hovering a token shows
    "<label> = value" through its title attribute, so no JavaScript is needed.

    `scale` is the |value| that gets the strongest colour (default: the largest |value| here).
    """
    if len(tokens) != len(values):
        raise ValueError(f"token_heatmap: {len(tokens)} tokens but {len(values)} values")
    finite = [abs(v) for v in values if math.isfinite(v)]
    scale = scale if scale is not None else (max(finite) if finite else 0.0)
    shown = [
        (text, heat_class(v, scale), f"{text.strip() or repr(text)}: {label} = {format_value(float(v))}") for text, v in zip(tokens, values)
    ]
    return render(HEATMAP, tokens=shown)


HEATMAP_LEGEND = """<p class="legend"><span class="tok h-n{{ top }}">&minus;{{ scale }}</span><span class="tok h-n{{ mid }}">&minus;</span>\
<span class="tok h-0">0</span><span class="tok h-p{{ mid }}">+</span><span class="tok h-p{{ top }}">+{{ scale }}</span> {{ label }}: \
{{ meaning }}; one colour scale for every text shown, the strongest colour at |value| &ge; {{ scale }}. Hover a token for its value.</p>"""


def heatmap_legend(*, label: str, scale: float, meaning: str) -> Markup:
    """The key of token heatmaps drawn on one symmetric `scale`: the colour steps, what the sign means."""
    return render(HEATMAP_LEGEND, top=HEAT_LEVELS, mid=HEAT_LEVELS // 2, scale=format_value(float(scale)), label=label, meaning=meaning)


# --------------------------------------------------------------------------- verdicts


VERDICTS = """<ul class="verdicts">{% for v in verdicts %}<li class="verdict v-{{ v.level }}"><span class="badge">{{ v.level }}</span>
<strong>{{ v.check }}</strong>: {{ v.evidence }} <span class="threshold">({{ v.threshold }})</span></li>{% endfor %}</ul>"""


def verdict_list(verdicts: Sequence[Any]) -> Markup:
    """Verdicts (anything with level, check, evidence, threshold) as a list with coloured badges."""
    return render(VERDICTS, verdicts=verdicts) if verdicts else Markup("")


# --------------------------------------------------------------------------- the stylesheet


def _heat_rules() -> str:
    rules = []
    for level in range(1, HEAT_LEVELS + 1):
        alpha = level / HEAT_LEVELS * 0.85
        rules.append(f".h-p{level}{{background:rgba(214,39,40,{alpha:.2f})}}")
        rules.append(f".h-n{level}{{background:rgba(31,119,180,{alpha:.2f})}}")
    return "\n".join(rules)


STYLESHEET = (
    """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg-soft:#f6f8fa;--ok:#1a7f37;--warn:#9a6700;--flag:#cf222e}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;max-width:70rem;padding:1rem 1.5rem 4rem}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.3rem;border-bottom:1px solid var(--line);padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}a{color:#0969da}
.muted,.note,.threshold{color:var(--muted)}.note{font-size:.9rem}
nav.toc ol{columns:2;font-size:.95rem}
.table-wrap{overflow-x:auto;margin:.4rem 0 1rem}
table{border-collapse:collapse;font-size:.88rem}caption{text-align:left;color:var(--muted);padding:.2rem 0}
th,td{border-bottom:1px solid var(--line);padding:.25rem .6rem;text-align:left;vertical-align:top;max-width:38rem;overflow-wrap:break-word}
th{background:var(--bg-soft);font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.4rem 0}dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
figure.plot{margin:.5rem 0}figure.plot img{max-width:100%;height:auto}
ul.verdicts{list-style:none;padding:0;margin:.4rem 0}.verdict{margin:.2rem 0}
.badge{display:inline-block;min-width:3rem;text-align:center;border-radius:.8rem;padding:0 .5rem;margin-right:.4rem;color:#fff;font-size:.8rem;font-weight:600;text-transform:uppercase}
.v-ok .badge{background:var(--ok)}.v-warn .badge{background:var(--warn)}.v-flag .badge{background:var(--flag)}
.skipped{border-left:4px solid var(--line);padding:.2rem .8rem;color:var(--muted)}
.summary{background:var(--bg-soft);border:1px solid var(--line);border-radius:.5rem;padding:.6rem 1.2rem}.summary h2{margin-top:.4rem}
.headlines{display:flex;flex-wrap:wrap;gap:.6rem 2rem}.headline{min-width:10rem}.headline b{display:block;font-size:1.25rem}
.side{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.side>div{min-width:0}
.tokens{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem;white-space:pre-wrap;line-height:1.7}
.tok{border-radius:2px}
.legend{font-size:.85rem;color:var(--muted)}.legend .tok{padding:0 .35rem;margin-right:1px;color:var(--fg)}
details>summary{cursor:pointer;color:#0969da;margin:.3rem 0}
.h-0{background:transparent}
"""
    + _heat_rules()
    + """
@media print{body{max-width:none;font-size:11pt}nav.toc{display:none}h2{break-after:avoid}figure,table,.side{break-inside:avoid}
a{color:inherit;text-decoration:none}.tok{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
"""
)
"""The stylesheet of reports and of Results shown in Jupyter."""

STYLESHEET_MARKUP = Markup(STYLESHEET)
"""The stylesheet as trusted markup: our own constant, the one piece of HTML not produced by a template."""


def stylesheet_hash() -> str:
    """The CSP source that allows exactly `STYLESHEET` as an inline <style> element."""
    digest = hashlib.sha256(STYLESHEET.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy() -> str:
    """A policy that allows nothing but our stylesheet and data: images: no script, font, frame or network load."""
    return f"default-src 'none'; style-src {stylesheet_hash()}; img-src data:; base-uri 'none'; form-action 'none'"


def with_stylesheet(html: Markup) -> Markup:
    """`html` (Markup from `render`; a plain str is escaped) preceded by the stylesheet, for display outside a report (Jupyter's `_repr_html_`)."""
    return render("<style>{{ css }}</style>{{ html }}", css=STYLESHEET_MARKUP, html=html)
