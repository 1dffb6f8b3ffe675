"""Self-contained HTML report of experiment results: the claim table, then one section per experiment
with its notes, plots (PNG embedded as base64, full report width, click for full size) and audio players (WAV
embedded) beside the text they speak (a result's `texts`: text files in its folder). Opens from disk."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;width:100%;margin:1em 0}th,td{border:1px solid #ccc;padding:.4em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.v-reproduced{background:#e3f6e3}.v-partly{background:#fff6d6}.v-not{background:#fde2e2}.v-error{background:#f4c7c7}
.v-untestable{background:#e8e8f4}
img{width:100%;border:1px solid #ddd;margin:.5em 0}figure{margin:1em 0}
.dialogue{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}.dialogue pre{flex:1 1 320px;white-space:pre-wrap;font-size:.95em}
.players{flex:1 1 320px}.players p{margin:.3em 0}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
.meta{color:#666;font-size:.9em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
"""


def _vclass(verdict: str) -> str:
    return {"reproduced": "v-reproduced", "partly": "v-partly", "not reproduced": "v-not", "not testable here": "v-untestable"}.get(verdict, "v-error")


def _embed(path: Path, mime: str) -> str | None:
    if not path.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def render(results: list[dict], env: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sherman reproduction report</title><style>{STYLE}</style></head><body>"]
    parts.append("<h1>Sherman reproduction report</h1>")
    parts.append("<p class='meta'>" + " · ".join(f"{e(str(k))}: {e(str(v))}" for k, v in env.items()) + "</p>")
    parts.append("<p class='meta'>Verdicts follow one rule (sherman/experiments/verdict.py): <b>reproduced</b> needs an effect of at least "
                 "the claim's threshold and outside the spread over seeds; a difference inside the seed spread is <b>not reproduced</b>; "
                 "a comparison of two failures, or a failed precondition, is <b>not testable here</b>; <b>partly</b> is a real but small "
                 "effect, an effect seen with one seed only, or a mix of rows.</p>")
    parts.append("<h2>Claims</h2><table id='claims'><tr><th>experiment</th><th>claim</th><th>paper</th><th>ours</th><th>verdict</th></tr>")
    for r in results:
        rows = r.get("rows") or [{"claim": r.get("claim", ""), "paper": "", "ours": r.get("notes", ""), "verdict": r["verdict"]}]
        for i, row in enumerate(rows):
            name = f"<a href='#{e(r['name'])}'>{e(r['name'])}</a> <span class='meta'>({e(str(r.get('budget', '')))})</span>" if i == 0 else ""
            v = str(row.get("verdict", r["verdict"]))
            parts.append(
                f"<tr><td>{name}</td><td>{e(str(row.get('claim', '')))}</td><td>{e(str(row.get('paper', '')))}</td>"
                f"<td>{e(str(row.get('ours', '')))}</td><td class='{_vclass(v)}'>{e(v)}</td></tr>"
            )
    parts.append("</table>")
    for r in results:
        d = Path(r.get("dir", "."))
        parts.append(f"<h2 id='{e(r['name'])}'>{e(r['name'])}: <span class='{_vclass(r['verdict'])}'>{e(r['verdict'])}</span></h2>")
        parts.append(f"<p><b>Paper claim.</b> {e(str(r.get('claim', '')))}</p>")
        parts.append(f"<p class='meta'>budget {e(str(r.get('budget', '')))} · {e(str(r.get('seconds', '')))} s</p>")
        if r.get("notes"):
            parts.append(f"<p>{e(str(r['notes']))}</p>")
        for p in r.get("plots", []):
            src = _embed(d / p, "image/png")
            parts.append(f"<figure><a href='{src}' target='_blank'><img alt='{e(p)}' src='{src}'></a><figcaption class='meta'>{e(p)} (click for full size)</figcaption></figure>"
                         if src else f"<p class='meta'>missing plot {e(p)}</p>")  # fmt: skip
        players = []
        for a in r.get("audio", []):
            src = _embed(d / a, "audio/wav")
            players.append(f"<p>{e(a)}<br><audio controls src='{src}'></audio></p>" if src else f"<p class='meta'>missing audio {e(a)}</p>")
        texts = [(t, (d / t).read_text()) for t in r.get("texts", []) if (d / t).is_file()]
        if players or texts:  # the dialogue's text beside its audio players
            text_html = "".join(f"<pre><b>{e(t)}</b>\n{e(body)}</pre>" for t, body in texts)
            parts.append(f"<div class='dialogue'>{text_html}<div class='players'>{''.join(players)}</div></div>")
        if r.get("metrics"):
            parts.append("<details><summary>metrics</summary><pre>" + e(json.dumps(r["metrics"], indent=1, default=str)[:20000]) + "</pre></details>")
        if r.get("error"):
            parts.append("<details open><summary>error</summary><pre>" + e(r["error"]) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: list[dict], report_dir: Path, env: dict) -> Path:
    """Write index.html and results.json (merged with results of earlier runs of other experiments)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    store = report_dir / "results.json"
    merged: dict[str, dict] = {}
    if store.is_file():
        try:
            merged = {r["name"]: r for r in json.loads(store.read_text())["results"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            merged = {}
    for r in results:
        merged[r["name"]] = r
    allres = list(merged.values())
    store.write_text(json.dumps({"env": env, "results": allres}, indent=1, default=str))
    path = report_dir / "index.html"
    path.write_text(render(allres, env))
    return path
