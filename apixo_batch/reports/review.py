"""``review.html``: the whole campaign as one page a content team can look at.

One self-contained file in the output folder: inline CSS and JS, no network at
view time, every video path relative to the folder (zip it or serve it as it is).
The jobs travel as JSON inside the page and the script builds the cards from them
as the reader scrolls, so 100,000 jobs are one page that stays usable and a file
written in one pass over the journal. User and API text (prompts, fail messages)
only ever reaches the page as JSON, read back and set as ``textContent``: nothing
in it can run as script.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..events import Summary
from ..journal import JobRow
from .manifest import manifest_state

__all__ = ["REVIEW_FILE", "write_review"]

REVIEW_FILE = "review.html"

# Inside <script>, "</script>" or "<!--" in a prompt would end or bend the block: the
# JSON is ASCII, and these three are written as escapes JSON.parse reads back.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _job(row: JobRow) -> dict[str, Any]:
    inp = row.input
    return {
        "id": row.id,
        "model": row.model,
        "mode": inp.get("mode"),
        "duration": inp.get("duration"),
        "shape": inp.get("resolution") or inp.get("aspect_ratio"),
        "prompt": inp.get("prompt", ""),
        "negative": inp.get("negative_prompt"),
        "seed": inp.get("seed"),
        "state": manifest_state(row.state),
        "fail_code": row.fail_code,
        "fail_msg": row.fail_msg,
        "task_id": row.task_id,
        "cost": row.cost_usd,
        "gen_ms": row.cost_time_ms,
        "files": list(row.landed_files),
        "urls": len(row.result_urls),
        "expires_at": row.expires_at,
    }


def write_review(
    rows: Iterable[JobRow],
    out_dir: Path,
    *,
    name: str,
    job_file: str,
    summary: Summary | None = None,
) -> Path:
    """Write ``out_dir/review.html`` from the journal (atomically); returns its path."""
    path = out_dir / REVIEW_FILE
    tmp = out_dir / f".review-{secrets.token_hex(8)}.tmp"
    counts: Counter[str] = Counter()
    spent = 0.0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_HEAD.replace("__TITLE__", html.escape(f"{name}: review")))
            out.write('<script id="jobs" type="application/json">[')
            first = True
            for row in rows:
                if not row.in_file and row.task_id is None:
                    continue  # removed from the file before it cost anything
                job = _job(row)
                counts[job["state"]] += 1
                if row.task_id is not None and row.cost_usd:
                    spent += row.cost_usd
                out.write(("" if first else ",") + json.dumps(job).translate(_SCRIPT_SAFE))
                first = False
            out.write("]</script>\n")
            meta = {
                "name": name,
                "job_file": job_file,
                "made_at": time.time(),
                "counts": dict(counts),
                "spent_usd": round(spent, 4),
                "wall_s": summary.wall_s if summary else None,
                "learned_rpm": summary.learned_rpm if summary else None,
                "learned_slots": summary.learned_slots if summary else None,
            }
            out.write('<script id="meta" type="application/json">')
            out.write(json.dumps(meta).translate(_SCRIPT_SAFE) + "</script>\n")
            out.write(_TAIL)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { font: 14px/1.4 system-ui, sans-serif; color: #1d2330; background: #f4f5f8; }
body { margin: 0; }
header { padding: 16px 24px; background: #1d2330; color: #fff; }
header h1 { margin: 0 0 6px; font-size: 20px; }
header .facts span { margin-right: 18px; white-space: nowrap; }
.controls { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 8px;
  padding: 10px 24px; background: #fff; border-bottom: 1px solid #d8dbe3; }
.controls input[type=search] { flex: 1 1 240px; padding: 5px 8px; }
main { padding: 16px 24px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
#attention .group { background: #fff1f0; border: 1px solid #f3c2bd; border-radius: 6px;
  padding: 8px 12px; margin-bottom: 8px; }
#attention code { background: #fff; padding: 2px 6px; border-radius: 4px; }
#cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #d8dbe3; border-radius: 8px; padding: 10px;
  overflow-wrap: anywhere; }
.card .videos { display: flex; gap: 6px; }
.card video { width: 100%; max-height: 240px; background: #000; border-radius: 4px; }
.card .none { flex: 1; display: flex; align-items: center; justify-content: center; height: 120px;
  background: #eceef3; border-radius: 4px; color: #5a6272; text-align: center; padding: 6px; }
.card .id { font-weight: 600; }
.card .state { float: right; font-size: 12px; padding: 1px 8px; border-radius: 10px; }
.state.done { background: #ddf3e4; } .state.failed { background: #fbd9d5; }
.state.expired { background: #fbe7c6; } .state.pending { background: #e1e6f5; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 8px; margin: 6px 0 0;
  font-size: 12px; } .card dt { color: #5a6272; } .card dd { margin: 0; }
.card .prompt { margin: 6px 0 0; } .fail { color: #a3271b; }
#more { height: 40px; } #shown { color: #5a6272; }
</style></head><body>
"""

_TAIL = """<header><h1 id="title"></h1><div class="facts" id="facts"></div></header>
<div class="controls">
  <label>state <select id="state"><option value="">all</option></select></label>
  <label>model <select id="model"><option value="">all</option></select></label>
  <input type="search" id="search" placeholder="search prompts and ids">
  <label>sort <select id="sort"><option value="file">job-file order</option>
    <option value="gen-desc">time to generate, longest first</option>
    <option value="gen-asc">time to generate, shortest first</option></select></label>
  <span id="shown"></span>
</div>
<main>
  <section id="attention"></section>
  <h2>Jobs</h2>
  <div id="cards"></div>
  <div id="more"></div>
</main>
<script>
"use strict";
const JOBS = JSON.parse(document.getElementById("jobs").textContent);
const META = JSON.parse(document.getElementById("meta").textContent);
const PAGE = 60;
let view = JOBS, drawn = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function seconds(ms) { return ms == null ? "" : (ms / 1000).toFixed(1) + " s"; }
function hoursLeft(at) {
  if (at == null) return "expiry unknown";
  const h = (at * 1000 - Date.now()) / 3600000;
  return h > 0 ? h.toFixed(1) + " h left before its URL expires" : "its URL has expired";
}
function relative(path) { return path.split("/").map(encodeURIComponent).join("/"); }

function card(job) {
  const c = el("article", {"class": "card", "data-id": job.id, "data-state": job.state});
  const videos = el("div", {"class": "videos"});
  if (job.files.length) {
    for (const f of job.files) {
      videos.appendChild(el("video", {"controls": "", "preload": "metadata", "src": relative(f)}));
    }
  } else {
    let why = job.state === "failed" ? "failed" : "not on disk";
    if (job.urls && job.state !== "failed") why += ": " + hoursLeft(job.expires_at);
    videos.appendChild(el("div", {"class": "none"}, why));
  }
  c.appendChild(videos);
  const head = el("div", {}, null);
  head.appendChild(el("span", {"class": "id"}, job.id));
  head.appendChild(el("span", {"class": "state " + job.state}, job.state));
  c.appendChild(head);
  c.appendChild(el("div", {"class": "prompt"}, job.prompt));
  const dl = el("dl");
  const rows = [["model", job.model], ["mode", job.mode], ["duration", job.duration + " s"],
    ["shape", job.shape], ["negative", job.negative], ["seed", job.seed],
    ["task", job.task_id], ["cost", job.cost == null ? "unknown" : "$" + job.cost.toFixed(2)],
    ["generated in", seconds(job.gen_ms)]];
  if (job.fail_code) rows.push(["fail", job.fail_code + ": " + (job.fail_msg || "")]);
  for (const [k, v] of rows) {
    if (v === null || v === undefined || v === "") continue;
    dl.appendChild(el("dt", {}, k));
    dl.appendChild(el("dd", k === "fail" ? {"class": "fail"} : {}, v));
  }
  c.appendChild(dl);
  return c;
}

function drawMore() {
  const box = document.getElementById("cards");
  const stop = Math.min(view.length, drawn + PAGE);
  const frag = document.createDocumentFragment();
  for (; drawn < stop; drawn++) frag.appendChild(card(view[drawn]));
  box.appendChild(frag);
  document.getElementById("shown").textContent =
    view.length + " of " + JOBS.length + " jobs (" + drawn + " drawn)";
}

function apply() {
  const state = document.getElementById("state").value;
  const model = document.getElementById("model").value;
  const words = document.getElementById("search").value.trim().toLowerCase();
  const sort = document.getElementById("sort").value;
  view = JOBS.filter(j => (!state || j.state === state) && (!model || j.model === model) &&
    (!words || j.id.toLowerCase().includes(words) ||
     String(j.prompt).toLowerCase().includes(words)));
  if (sort !== "file") {
    const sign = sort === "gen-desc" ? -1 : 1;
    view = view.slice().sort((a, b) => sign * ((a.gen_ms ?? -1) - (b.gen_ms ?? -1)));
  }
  document.getElementById("cards").replaceChildren();
  drawn = 0;
  drawMore();
  fill();
}

function header() {
  document.getElementById("title").textContent = META.name;
  const facts = document.getElementById("facts");
  const add = text => facts.appendChild(el("span", {}, text));
  for (const s of ["done", "failed", "expired", "pending"]) add((META.counts[s] || 0) + " " + s);
  add("spend ~$" + META.spent_usd.toFixed(2) + " (estimated)");
  if (META.wall_s != null) add("last run took " + seconds(META.wall_s * 1000));
  if (META.learned_rpm) add("account ~" + META.learned_rpm + " requests/min");
  if (META.learned_slots) add("account ~" + META.learned_slots + " tasks at once");
  add("made " + new Date(META.made_at * 1000).toLocaleString());
}

function attention() {
  const failed = JOBS.filter(j => j.state === "failed");
  const box = document.getElementById("attention");
  if (!failed.length) return;
  box.appendChild(el("h2", {}, "Needs attention: " + failed.length + " failed"));
  const byCode = new Map();
  for (const j of failed) {
    const code = j.fail_code || "UNKNOWN";
    if (!byCode.has(code)) byCode.set(code, []);
    byCode.get(code).push(j);
  }
  for (const [code, jobs] of byCode) {
    const g = el("div", {"class": "group", "data-code": code});
    g.appendChild(el("strong", {}, code + " x" + jobs.length));
    g.appendChild(el("div", {}, jobs[0].fail_msg || ""));
    g.appendChild(el("div", {}, jobs.slice(0, 20).map(j => j.id).join(", ") +
      (jobs.length > 20 ? ", ..." : "")));
    box.appendChild(g);
  }
  const retry = el("p", {}, "To submit them again (each is charged again): ");
  retry.appendChild(el("code", {}, "apixo-batch run " + META.job_file + " --retry-failed"));
  box.appendChild(retry);
}

function options(id, values) {
  const select = document.getElementById(id);
  for (const v of values) select.appendChild(el("option", {"value": v}, v));
}

header();
attention();
options("state", ["done", "failed", "expired", "pending"].filter(s => META.counts[s]));
options("model", [...new Set(JOBS.map(j => j.model))].sort());
for (const id of ["state", "model", "sort"]) document.getElementById(id).onchange = apply;
document.getElementById("search").oninput = apply;
function fill() {
  // Cards as the reader scrolls: draw while the end of the list is near the screen.
  const more = document.getElementById("more");
  while (drawn < view.length && more.getBoundingClientRect().top < innerHeight + 800) drawMore();
}
new IntersectionObserver(fill, {rootMargin: "800px"}).observe(document.getElementById("more"));
addEventListener("scroll", fill, {passive: true});
apply();
fill();
</script>
</body></html>
"""
