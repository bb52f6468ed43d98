"""The page of ``tfkit report``: sections written as ``report.html`` or ``report.md``.

A section is ``(heading, png name or None, table or None, note)``; :func:`write_page`
writes them in order, atomically. :data:`FORMATS` are the page formats the command
line offers. This module imports neither pandas nor TensorFlow (tables arrive as
DataFrames already made), so the command line takes its choices from here.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import pandas as pd
    >>> out = Path(tempfile.mkdtemp())
    >>> page = write_page(out, "md", "demo", [("Scores", None, pd.DataFrame({"auc": [0.91234]}), "OOF")])
    >>> print(page.read_text().splitlines()[:5])
    ['# demo', '', '## Scores', '', 'OOF']
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Tuple

from tfkit.utils import TfkitError, atomic_write

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMATS", "DEFAULT_FORMAT", "Section", "check_format", "table_html", "write_page"]

FORMATS = ("html", "md")
DEFAULT_FORMAT = "html"

Section = Tuple[str, "str | None", "pd.DataFrame | None", str]  # heading, png name, table, note

_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
          "img{max-width:100%}table.t{border-collapse:collapse;font-size:13px}"
          "table.t td,table.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}</style>")


def check_format(fmt: str) -> None:
    """Raise a one-line :class:`TfkitError` unless ``fmt`` is one of :data:`FORMATS`.

    Example:
        >>> check_format("pdf")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: report: fmt must be 'html' or 'md', got 'pdf'
    """
    if fmt not in FORMATS:
        raise TfkitError(f"report: fmt must be {' or '.join(repr(f) for f in FORMATS)}, got {fmt!r}")


def table_html(frame: "pd.DataFrame", floats: str = "{:.4f}") -> str:
    """An HTML table of ``frame`` (no index, floats with ``floats``, text escaped)."""
    return frame.to_html(index=False, float_format=lambda v: floats.format(v), border=0, classes="t", escape=True)


def write_page(out: Path, fmt: str, title: str, sections: Sequence[Section]) -> Path:
    """Write ``out/report.html`` (``fmt="html"``) or ``out/report.md`` (``fmt="md"``).

    Args:
        out: the report folder (exists).
        fmt: one of :data:`FORMATS`.
        title: the page title.
        sections: ``(heading, png name or None, table or None, note)`` each, in order.

    Returns:
        The page's path.
    """
    check_format(fmt)
    text = _markdown(title, sections) if fmt == "md" else _html(title, sections)
    path = out / f"report.{fmt}"
    with atomic_write(path) as f:
        f.write(text)
    return path


def _markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for head, png, table, note in sections:
        lines += [f"## {head}", ""]
        if note:
            lines += [note, ""]
        if png:
            lines += [f"![{head}]({png})", ""]
        if table is not None:
            lines += [_markdown_table(table), ""]
    return "\n".join(lines)


def _markdown_table(table: "pd.DataFrame") -> str:
    if _has_tabulate():
        return table.to_markdown(index=False, floatfmt=".4f")
    return "```\n" + table.to_string(index=False) + "\n```"


def _html(title: str, sections: Sequence[Section]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for head, png, table, note in sections:
        parts.append(f"<h2>{html.escape(head)}</h2>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
        if png:
            parts.append(f"<img src='{html.escape(png)}' alt='{html.escape(head)}'>")
        if table is not None:
            parts.append(table_html(table))
    parts.append("</body></html>")
    return "\n".join(parts)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
