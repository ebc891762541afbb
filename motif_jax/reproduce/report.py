"""report.md and report.html from computed sections; figures as PNG files beside report.md and
inline (base64) in report.html, so the HTML file reads on its own."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from motif_jax.reproduce.sections import Section

FIGURES_DIR = "report_figures"


def verdict_lines(section: Section) -> list[tuple[str, str, str, str]]:
  """(lesson, measured by, verdict label, reason with its numbers) for every judgement."""
  out = [(c.lesson, f"{c.metric}: {c.better} vs {c.worse}", c.verdict.label,
          f"{c.verdict.reason}; {c.budget}") for c in section.comparisons]
  out += [(lesson, measured, v.label, v.reason) for lesson, measured, v in section.checks]
  return out


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
  return lines


def summary_rows(sections: Sequence[Section]) -> list[list[str]]:
  rows = []
  for s in sections:
    if s.status == "not run":
      rows.append([f"{s.number}. {s.title}", "not run", s.reason])
      continue
    for lesson, _, label, reason in verdict_lines(s):
      rows.append([f"{s.number}. {lesson}", label, reason])
    if not verdict_lines(s):
      rows.append([f"{s.number}. {s.title}", s.status, s.reason or "no judgement"])
  return rows


def markdown(sections: Sequence[Section], meta: dict) -> str:
  intro = [line for p in meta.get("intro", []) for line in (p, "")]
  lines = [f"# {meta['title']}", "", *intro,
           "## Verdicts", "", *_md_table(["lesson", "verdict", "measured"],
                                         summary_rows(sections)), ""]
  for s in sections:
    lines += [f"## {s.number}. {s.title}", "", f"**Recipe lesson.** {s.claim}", ""]
    if s.status != "ran":
      lines += [f"**Status: {s.status}.** {s.reason}", ""]
    judged = verdict_lines(s)
    if judged:
      lines += _md_table(["prediction", "measured by", "verdict", "numbers"],
                         [[a, b, f"**{c}**", d] for a, b, c, d in judged]) + [""]
    for t in s.tables:
      lines += [f"*{t.caption}*", "", *_md_table(t.header, t.rows), ""]
    for f in s.figures:
      lines += [f"![{f.caption}]({FIGURES_DIR}/{f.name}.png)", "", f"*{f.caption}*", ""]
    lines += [f"- {n}" for n in s.notes] + ([""] if s.notes else [])
    if s.commands:
      lines += ["Rerun this part:", "", "```bash", *s.commands, "```", ""]
  return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                 for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
          "table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}"
          "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
          "th{background:#f3f3f3}pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}"
          ".supported{color:#1a7f37;font-weight:bold}.not{color:#b42318;font-weight:bold}"
          ".inconclusive{color:#9a6700;font-weight:bold}")


def _label_html(label: str) -> str:
  css = {"supported": "supported", "not supported": "not", "inconclusive": "inconclusive"}
  return f'<span class="{css.get(label, "")}">{html.escape(label)}</span>'


def html_page(sections: Sequence[Section], meta: dict) -> str:
  e = html.escape
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(meta['title'])}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{e(meta['title'])}</h1>"]
  parts += [f"<p>{e(p)}</p>" for p in meta.get("intro", []) if p]
  rows = summary_rows(sections)
  parts.append("<h2>Verdicts</h2><table><tr><th>lesson</th><th>verdict</th><th>measured</th></tr>"
               + "".join(f"<tr><td>{e(a)}</td><td>{_label_html(b)}</td><td>{e(c)}</td></tr>"
                         for a, b, c in rows) + "</table>")
  for s in sections:
    parts.append(f"<h2>{s.number}. {e(s.title)}</h2><p><b>Recipe lesson.</b> {e(s.claim)}</p>")
    if s.status != "ran":
      parts.append(f"<p><b>Status: {e(s.status)}.</b> {e(s.reason)}</p>")
    judged = verdict_lines(s)
    if judged:
      parts.append("<table><tr><th>prediction</th><th>measured by</th><th>verdict</th>"
                   "<th>numbers</th></tr>" + "".join(
                       f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{_label_html(c)}</td>"
                       f"<td>{e(d)}</td></tr>" for a, b, c, d in judged) + "</table>")
    for t in s.tables:
      parts.append(f"<p><i>{e(t.caption)}</i></p>" + _html_table(t.header, t.rows))
    for f in s.figures:
      data = base64.b64encode(f.png).decode()
      parts.append(f"<figure><img alt='{e(f.caption)}' src='data:image/png;base64,{data}'>"
                   f"<figcaption>{e(f.caption)}</figcaption></figure>")
    if s.notes:
      parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in s.notes) + "</ul>")
    if s.commands:
      parts.append("<p>Rerun this part:</p><pre>" + e("\n".join(s.commands)) + "</pre>")
  parts.append("</body></html>")
  return "\n".join(parts)


def write(out_dir: str | Path, sections: Sequence[Section], meta: dict) -> dict[str, Path]:
  """report.md, report.html and report_figures/*.png under `out_dir`."""
  out_dir = Path(out_dir)
  (out_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
  for s in sections:
    for f in s.figures:
      (out_dir / FIGURES_DIR / f"{f.name}.png").write_bytes(f.png)
  paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
  paths["md"].write_text(markdown(sections, meta))
  paths["html"].write_text(html_page(sections, meta))
  return paths
