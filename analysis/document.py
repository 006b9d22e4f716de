"""The report as documents: `report.md` (figures as files beside it) and a self-contained
`index.html` (figures as base64 PNG, CSS inline, no script and no external asset)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup

from analysis.formats import to_html, to_markdown
from analysis.plots import Figure
from analysis.tables import Table


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    facts: list[tuple[str, str]]  # shown as a list at the top
    sections: list[Section]


def to_report_md(doc: Document, figure_dir: str = "figures") -> str:
    out = [f"# {doc.title}", ""]
    out += [f"- **{k}**: {v}" for k, v in doc.facts] + [""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for t in s.tables:
            out.append(to_markdown(t, level=3))
        for f in s.figures:
            out += [f"### {f.title}", "", f"![{f.title}]({figure_dir}/{f.name}.png)", "",
                    f"_{f.caption}_", ""]
    return "\n".join(out)


PAGE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ doc.title }}</title>
<style>
/* The page never scrolls sideways (analysis/browser_check.py checks it at 1300 and 800 px):
   content is at most 1200 px, the figures' width (analysis/panels.py), a table wider than the
   window scrolls inside its own box, and long words (URLs, settings lists) wrap. */
*, *::before, *::after { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1232px;
       color: #222; overflow-wrap: anywhere; }
h1 { font-size: 24px; } h2 { border-bottom: 2px solid #ccc; margin-top: 36px; } h3 { margin-top: 24px; }
.table-scroll { max-width: 100%; overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; overflow-wrap: normal; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #eef2f7; } tbody tr:nth-child(even) { background: #fafafa; }
td strong { color: #0a5; }
.note, .caption { color: #555; font-size: 13px; max-width: 1000px; }
.block { margin: 14px 0 2px; }
nav ul { columns: 2 300px; }
figure { margin: 16px 0; }
img { display: block; width: 100%; height: auto; outline: 1px solid #ddd; }  /* outline: no width added */
dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 16px; }
dt { font-weight: 600; } dd { margin: 0; }
</style></head>
<body>
<h1>{{ doc.title }}</h1>
<dl>{% for k, v in doc.facts %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<nav><ul>{% for s in doc.sections %}<li><a href="#{{ s.id }}">{{ s.title }}</a></li>{% endfor %}</ul></nav>
{% for s in doc.sections %}
<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
<p class="note">{% for t in s.tables %}<a href="#{{ t.name }}">{{ t.title }}</a> · {% endfor %}
{% for f in s.figures %}<a href="#{{ f.name }}">{{ f.title }}</a>
{%- if not loop.last %} · {% endif %}{% endfor %}</p>
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% for t in s.tables %}{{ tables[t.name] }}{% endfor %}
{% for f in s.figures %}<figure id="{{ f.name }}"><h3>{{ f.title }}</h3>
<img alt="{{ f.title }}" src="data:image/png;base64,{{ images[f.name] }}">
<figcaption class="caption">{{ f.caption }}</figcaption></figure>
{% endfor %}</section>
{% endfor %}
</body></html>
""", autoescape=True)


def to_index_html(doc: Document) -> str:
    tables = {t.name: Markup(to_html(t)) for s in doc.sections for t in s.tables}
    images = {f.name: base64.b64encode(f.png).decode("ascii") for s in doc.sections for f in s.figures}
    return PAGE.render(doc=doc, tables=tables, images=images)
