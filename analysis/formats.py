"""A `Table` as Markdown, LaTeX (booktabs) or an HTML fragment; blocks become sub-tables.

Written by hand rather than with DataFrame.to_markdown (needs tabulate) or Styler.to_latex, to
keep bold cells and blocks the same in all three formats.
"""

from __future__ import annotations

import html

import pandas as pd

from analysis.tables import Table


def _blocks(table: Table):
    """(heading or None, data, bold) per block, the block column dropped."""
    if table.block is None:
        yield None, table.data, table.bold
        return
    keys = table.data[table.block]
    for value in pd.unique(keys):
        rows = keys == value
        yield (value, table.data[rows].drop(columns=table.block),
               table.bold[rows].drop(columns=table.block))


def _md_cell(text: str, bold: bool) -> str:
    text = str(text).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")
    return f"**{text}**" if bold and text else text


def to_markdown(table: Table, level: int = 3) -> str:
    out = [f"{'#' * level} {table.title}", ""]
    for heading, data, bold in _blocks(table):
        if heading is not None:
            out += [f"**{table.block} = {heading}**", ""]
        out.append("| " + " | ".join(_md_cell(c, False) for c in data.columns) + " |")
        out.append("|" + "---|" * len(data.columns))
        for (_, row), (_, b) in zip(data.iterrows(), bold.iterrows(), strict=True):
            out.append("| " + " | ".join(_md_cell(v, f) for v, f in zip(row, b, strict=True)) + " |")
        out.append("")
    if table.note:
        out += [f"_{table.note}_", ""]
    return "\n".join(out)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}
LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": "-", "–": "--", "<": r"\textless{}"}


def latex_escape(text: str) -> str:
    text = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for symbol, command in LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def to_latex(table: Table) -> str:
    """A booktabs tabular; blocks are separated by \\midrule, the block value in column one."""
    data, bold = table.data, table.bold
    cols = list(data.columns)
    out = [f"% {table.title}", r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
           " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    previous = None
    for (_, row), (_, b) in zip(data.iterrows(), bold.iterrows(), strict=True):
        cells = []
        for col, flag in zip(cols, b, strict=True):
            text = latex_escape(row[col])
            if table.block == col:
                text = text if row[col] != previous else ""
            cells.append(rf"\textbf{{{text}}}" if flag and text else text)
        if table.block and previous is not None and row[table.block] != previous:
            out.append(r"\midrule")
        previous = row[table.block] if table.block else None
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        out.append(f"% {table.note}")
    return "\n".join(out) + "\n"


def to_html(table: Table) -> str:
    """An HTML fragment (escaped): title, one <table> per block, the note. Each table sits in a
    `table-scroll` box (document.py's CSS), which scrolls sideways when the table is wider than
    the window, so the page itself never does."""
    esc = html.escape
    out = [f'<h3 id="{esc(table.name)}">{esc(table.title)}</h3>']
    for heading, data, bold in _blocks(table):
        if heading is not None:
            out.append(f'<p class="block">{esc(table.block)} = <b>{esc(str(heading))}</b></p>')
        head = "".join(f"<th>{esc(str(c))}</th>" for c in data.columns)
        out.append(f'<div class="table-scroll"><table><thead><tr>{head}</tr></thead><tbody>')
        for (_, row), (_, b) in zip(data.iterrows(), bold.iterrows(), strict=True):
            cells = (f"<td><strong>{esc(str(v))}</strong></td>" if f else f"<td>{esc(str(v))}</td>"
                     for v, f in zip(row, b, strict=True))
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table></div>")
    if table.note:
        out.append(f'<p class="note">{esc(table.note)}</p>')
    return "\n".join(out)
