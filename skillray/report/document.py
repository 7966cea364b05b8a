"""A report as data: sections of blocks, rendered to HTML (Jinja2, autoescaped) and to Markdown.

    report = Report("skillray run: runs/demo")
    sec = report.add(Section("Directions", [Text("..."), Table(["d", "label"], [[0, "x vs y"]])]))
    sec.children.append(Section("d0: x vs y", [Figure("d0_hist.png", png_bytes, "projections")]))
    report.write("runs/demo/report")   # index.html, report.md, figures/*.png

Blocks are small frozen values that know their two renderings; a stage adds what it wants to
show by building sections (see :mod:`skillray.report.run`). Figures are PNG bytes: written to
``figures/`` (linked from the Markdown) and embedded in the HTML as data URIs unless
``embed_images=False``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from skillray.artifacts import atomic_write_bytes

FIGURES = "figures"


def slug(text: str) -> str:
    """An HTML anchor for a title: lowercase words joined by '-'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "section"


def _md_cell(v: Any) -> str:
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text (escaped in HTML)."""

    text: str
    kind: str = field(default="text", init=False)

    def markdown(self) -> str:
        return self.text


@dataclass(frozen=True)
class Table:
    """A table: ``columns`` names, ``rows`` of values (floats shown with 4 significant digits)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    kind: str = field(default="table", init=False)

    def cells(self) -> list[list[str]]:
        return [[_fmt(v) for v in row] for row in self.rows]

    def markdown(self) -> str:
        head = "| " + " | ".join(_md_cell(c) for c in self.columns) + " |"
        sep = "|" + "---|" * len(self.columns)
        body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in self.cells()]
        return "\n".join([head, sep, *body])


@dataclass(frozen=True)
class Figure:
    """A PNG image: ``name`` is its file name under ``figures/``."""

    name: str
    png: bytes
    caption: str = ""
    kind: str = field(default="figure", init=False)

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()

    def markdown(self) -> str:
        return f"![{self.caption or self.name}]({FIGURES}/{self.name})" + (f"\n\n*{self.caption}*" if self.caption else "")


@dataclass(frozen=True)
class Snippets:
    """Example texts with a one-line header each (e.g. id, skill, projection)."""

    items: Sequence[tuple[str, str]]  # (header, text)
    title: str = ""
    kind: str = field(default="snippets", init=False)

    def markdown(self) -> str:
        out = [f"**{self.title}**", ""] if self.title else []
        for head, text in self.items:
            quoted = "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])
            out += [f"- `{head}`", "", quoted, ""]
        return "\n".join(out).rstrip()


@dataclass(frozen=True)
class Links:
    """A list of links to run files, ``(label, href)`` with hrefs relative to the report folder."""

    items: Sequence[tuple[str, str]]
    kind: str = field(default="links", init=False)

    def markdown(self) -> str:
        return "\n".join(f"- [{label}]({href})" for label, href in self.items)


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items (escaped in HTML); an item ``(text, [sub, ...])`` has one
    level of sub-items."""

    items: Sequence[str | tuple[str, Sequence[str]]]
    kind: str = field(default="bullets", init=False)

    def entries(self) -> list[tuple[str, list[str]]]:
        return [(it, []) if isinstance(it, str) else (it[0], list(it[1])) for it in self.items]

    def markdown(self) -> str:
        out = []
        for text, subs in self.entries():
            out.append(f"- {text}")
            out += [f"  - {s}" for s in subs]
        return "\n".join(out)


Block = Text | Table | Figure | Snippets | Links | Bullets


@dataclass
class Section:
    """A titled list of blocks, with optional sub-sections (rendered one heading level deeper)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    children: list["Section"] = field(default_factory=list)
    anchor: str | None = None

    def __post_init__(self):
        self.anchor = self.anchor or slug(self.title)

    def figures(self) -> list[Figure]:
        own = [b for b in self.blocks if isinstance(b, Figure)]
        return own + [f for c in self.children for f in c.figures()]

    def markdown(self, level: int = 2) -> str:
        out = [f"{'#' * level} {self.title}"]
        out += [b.markdown() for b in self.blocks]
        out += [c.markdown(level + 1) for c in self.children]
        return "\n\n".join(out)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
.snip{border-left:3px solid #9ab;margin:.4em 0;padding:.2em .7em;background:#f8fafc}
.snip .head{font-family:monospace;font-size:.8em;color:#456}.snip pre{white-space:pre-wrap;margin:.2em 0;font-size:.85em}
nav ul{columns:2}
</style></head><body>
<h1>{{ title }}</h1>
{% for p in intro %}<p>{{ p }}</p>{% endfor %}
<nav><ul>{% for s in sections %}<li><a href="#{{ s.anchor }}">{{ s.title }}</a></li>{% endfor %}</ul></nav>
{% macro render(sec, level) %}
<section id="{{ sec.anchor }}"><h{{ level }}>{{ sec.title }}</h{{ level }}>
{% for b in sec.blocks %}
{% if b.kind == "text" %}<p>{{ b.text }}</p>
{% elif b.kind == "table" %}<table><tr>{% for c in b.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in b.cells() %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{% elif b.kind == "figure" %}<figure><img src="{{ img(b) }}" alt="{{ b.caption or b.name }}">{% if b.caption %}<figcaption>{{ b.caption }}</figcaption>{% endif %}</figure>
{% elif b.kind == "snippets" %}{% if b.title %}<p><b>{{ b.title }}</b></p>{% endif %}
{% for head, text in b.items %}<div class="snip"><div class="head">{{ head }}</div><pre>{{ text }}</pre></div>{% endfor %}
{% elif b.kind == "bullets" %}<ul>{% for text, subs in b.entries() %}<li>{{ text }}{% if subs %}<ul>{% for s in subs %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}</li>{% endfor %}</ul>
{% elif b.kind == "links" %}<ul>{% for label, href in b.items %}<li><a href="{{ href }}">{{ label }}</a></li>{% endfor %}</ul>
{% endif %}
{% endfor %}
{% for c in sec.children %}{{ render(c, level + 1) }}{% endfor %}
</section>
{% endmacro %}
{% for s in sections %}{{ render(s, 2) }}{% endfor %}
</body></html>
"""


@dataclass
class Report:
    """Sections in order, plus intro paragraphs; :meth:`write` renders both formats."""

    title: str
    sections: list[Section] = field(default_factory=list)
    intro: list[str] = field(default_factory=list)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures()]

    def html(self, embed_images: bool = True) -> str:
        from jinja2 import Environment

        env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
        tmpl = env.from_string(_TEMPLATE)
        img = (lambda f: f.data_uri()) if embed_images else (lambda f: f"{FIGURES}/{f.name}")
        return tmpl.render(title=self.title, intro=self.intro, sections=self.sections, img=img)

    def markdown(self) -> str:
        parts = [f"# {self.title}", *self.intro]
        parts += [s.markdown(2) for s in self.sections]
        return "\n\n".join(parts) + "\n"

    def write(self, out_dir: str | Path, embed_images: bool = True) -> Path:
        """Write ``index.html``, ``report.md`` and ``figures/*.png`` (atomically, each); returns index.html."""
        out = Path(out_dir)
        names = [f.name for f in self.figures()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"figure names must be unique within a report; repeated: {sorted(dup)}")
        for f in self.figures():
            atomic_write_bytes(out / FIGURES / f.name, f.png)
        atomic_write_bytes(out / "report.md", self.markdown().encode())
        atomic_write_bytes(out / "index.html", self.html(embed_images).encode())
        return out / "index.html"

