"""``review.html``: the whole campaign as one page a content team can look at.

One self-contained file in the output folder: inline CSS and JS, every video path
relative to the folder (zip it or serve it as it is); the only thing fetched at view
time is a source image's thumbnail, lazily, from the job's own URL. The jobs travel as
JSON inside the page and the script builds the cards from them as the reader scrolls,
so 100,000 jobs are one page that stays usable and a file written in one pass over the
journal. User and API text (prompts, fail messages, image URLs) only ever reaches the
page as JSON, read back and set as ``textContent`` or as an attribute: nothing in it
can run as script, and only ``http(s)`` URLs become links.

The page tells what the journal knows and nothing it does not: an expired job says so
and how to generate it again, a pending one why it waits (never submitted, over the
budget, in flight, its download given up), the spend is what the known prices add up
to plus how many jobs are of unknown price, and "last run" is the last run that did
work (:mod:`apixo_batch.journal.runs`).
"""

from __future__ import annotations

import html
import json
import os
import secrets
import shlex
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..events import Summary
from ..journal import JobRow, JobState, LastRuns, RunRecord, Totals
from .manifest import manifest_state

__all__ = ["REVIEW_FILE", "WAITS", "write_review"]

REVIEW_FILE = "review.html"


def _script_safe(text: str) -> str:
    """JSON that cannot leave its <script> block."""
    # "</script>" or "<!--" in a prompt would end or bend the block: the JSON is ASCII,
    # and these three are written as escapes JSON.parse reads back. Most jobs hold none:
    # a look first (str.translate with a table took a fifth of the writing at 100k jobs).
    if "<" in text or ">" in text or "&" in text:
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


# No spaces after separators: 8% of the page's size at 100,000 jobs, and still the C
# encoder (one encoder for every job: json.dumps with options builds one per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"))

#: why a pending job waits, as the page's data names it (the script words each)
WAITS = {
    "never": "never submitted",
    "requeued": "queued to be submitted again",
    "budget": "not submitted: over the budget",
    "stopped": "not submitted: the last run stopped submitting",
    "flight": "in flight",
    "download": "paid, download given up",
}

# Stops after which the queued jobs were left for a reason other than the budget.
_SUBMIT_STOPS = frozenset(
    {"refused", "fatal", "unreachable", "storage", "key-refused", "interrupted"}
)


def _queued_wait(latest: RunRecord | None) -> str | None:
    """Why the latest run left queued jobs unsubmitted, when a stop says so."""
    if latest is None:
        return None
    if _SUBMIT_STOPS.intersection(latest.stops):
        return "stopped"
    if "budget" in latest.stops:
        return "budget"
    return None


def _wait(row: JobRow, queued_wait: str | None) -> str | None:
    state = row.state
    if state is JobState.QUEUED:
        return queued_wait or ("requeued" if row.attempts else "never")
    if state in (JobState.SUBMITTING, JobState.SUBMITTED):
        return "flight"
    if state is JobState.SUCCEEDED:
        return "download"
    return None


def _images(inp: dict[str, Any]) -> list[str]:
    urls = inp.get("image_urls")
    found = [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
    one = inp.get("image_url")  # the oldest Wan page's name for its one image
    if isinstance(one, str):
        found.append(one)
    return found


def _job(row: JobRow, queued_wait: str | None) -> dict[str, Any]:
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
        "sound": inp.get("sound"),
        "cfg": inp.get("cfg_scale"),
        "images": _images(inp),
        "state": manifest_state(row.state),
        "wait": _wait(row, queued_wait),
        "dup": row.possibly_duplicated,
        "fail_code": row.fail_code,
        "fail_msg": row.fail_msg,
        "task_id": row.task_id,
        "cost": row.cost_usd,
        "gen_ms": row.cost_time_ms,
        # Earlier takes (`run --reroll`) first: the card plays every take the job holds;
        # the current take's only once they are on disk as journaled.
        "files": [*row.earlier_files, *row.landed_files],
        "urls": len(row.result_urls),
        "expires_at": row.expires_at,
    }


def _run(record: RunRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "ended_at": record.ended_at,
        "wall_s": record.wall_s,
        "submitted": record.submitted,
        "changed": record.changed,
        "stop_reason": record.stop_reason,
        "budget_usd": record.budget_usd,
    }


def _commands(job_file: str) -> dict[str, str]:
    """The next step for each kind of job that needs attention, ready to paste."""
    arg = shlex.quote(job_file)
    return {
        "retry_failed": f"apixo-batch run {arg} --retry-failed",
        "retry_expired": f"apixo-batch run {arg} --retry-expired",
        "download": f"apixo-batch download {arg}",
        "run": f"apixo-batch run {arg}",
    }


def write_review(
    rows: Iterable[JobRow],
    out_dir: Path,
    *,
    name: str,
    job_file: str,
    summary: Summary | None = None,
    totals: Totals | None = None,
    runs: LastRuns | None = None,
) -> Path:
    """Write ``out_dir/review.html`` from the journal (atomically); returns its path.

    ``totals`` are the journal's (every paid task, retries included); without them the
    spend is added up from the rows' current tasks. ``runs`` are the runs the journal
    kept: the header's "last run" and why queued jobs wait come from them."""
    path = out_dir / REVIEW_FILE
    tmp = out_dir / f".review-{secrets.token_hex(8)}.tmp"
    runs = runs or LastRuns()
    queued_wait = _queued_wait(runs.latest)
    counts: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    spent, unknown = 0.0, 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_HEAD.replace("__TITLE__", html.escape(f"{name}: review")))
            out.write('<script id="jobs" type="application/json">[')
            first = True
            for row in rows:
                if not row.in_file and row.task_id is None:
                    continue  # removed from the file before it cost anything
                job = _job(row, queued_wait)
                counts[job["state"]] += 1
                if job["wait"]:
                    waits[job["wait"]] += 1
                if row.task_id is not None:
                    if row.cost_usd is None:
                        unknown += 1
                    else:
                        spent += row.cost_usd
                out.write(("" if first else ",") + _script_safe(_COMPACT.encode(job)))
                first = False
            out.write("]</script>\n")
            if totals is not None:
                spent, unknown = totals.spent_known_usd, totals.spent_unknown_jobs
            meta = {
                "name": name,
                "job_file": job_file,
                "commands": _commands(job_file),
                "made_at": time.time(),
                "counts": dict(counts),
                "waits": dict(waits),
                "wait_words": WAITS,
                "spent_usd": round(spent, 4),
                "unknown_price_jobs": unknown,
                "last_run": _run(runs.work),
                "latest_run": _run(runs.latest),
                "learned_rpm": summary.learned_rpm if summary else None,
                "learned_slots": summary.learned_slots if summary else None,
            }
            out.write('<script id="meta" type="application/json">')
            out.write(_script_safe(json.dumps(meta)) + "</script>\n")
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
header .facts { display: flex; flex-wrap: wrap; gap: 2px 18px; }
header .facts span { white-space: nowrap; }
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
.card .why { margin: 6px 0 0; font-size: 12px; padding: 4px 6px; border-radius: 4px;
  background: #eef1f8; } .card .why.expired { background: #fbe7c6; }
.card code, #attention code { background: #f4f5f8; padding: 1px 4px; border-radius: 3px;
  font-size: 12px; }
.card .sources { display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0 0; }
.card .sources img { width: 64px; height: 64px; object-fit: cover; border-radius: 3px;
  background: #eceef3; display: block; font-size: 10px; color: #5a6272; overflow: hidden; }
#attention .group.expired { background: #fff6e5; border-color: #f0d39a; }
#attention .group.download { background: #eef4ff; border-color: #bfd0f3; }
#more { height: 40px; } #shown { color: #5a6272; }
</style></head><body>
"""

_TAIL = r"""<header><h1 id="title"></h1><div class="facts" id="facts"></div></header>
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
function human(s) {
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}
function when(at) { return new Date(at * 1000).toLocaleString(); }
function urlLeft(at) {
  if (at == null) return "when its URL expires is unknown";
  const h = (at * 1000 - Date.now()) / 3600000;
  return h > 0 ? h.toFixed(1) + " h left before its URL expires"
    : "its URL has expired (a download now marks it expired)";
}
function relative(path) { return path.split("/").map(encodeURIComponent).join("/"); }
function command(key) { return el("code", {}, META.commands[key]); }
function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
function line(cls, parts) {
  const node = el("div", {"class": "why " + cls});
  for (const p of parts) node.append(p);
  return node;
}

// What the video box says when there is no video.
function missing(job) {
  if (job.state === "failed") return "failed";
  if (job.state === "expired") return "expired: its URL expired before it was downloaded";
  if (job.state === "done") return "not on disk";
  return META.wait_words[job.wait] || "pending";
}

// Why the job is where it is and the one command that moves it on, or null.
function why(job) {
  const latest = META.latest_run || {};
  if (job.state === "expired") return line("expired", ["Expired: APIXO no longer holds the " +
    "video. Generating it again is a new task, charged again: ", command("retry_expired")]);
  if (job.state === "failed") return line("failed", ["To submit it again (charged again): ",
    command("retry_failed"), " (a refused input once it changed)."]);
  const dup = job.dup ? " A submit of it was cut off before its answer: it may have been " +
    "charged twice." : "";
  switch (job.wait) {
    case "never": return line("never", ["Never submitted: ", command("run"), " submits it."]);
    case "requeued": return line("requeued", ["Submitted before, queued again: ",
      command("run"), " submits it." + dup]);
    case "budget": return line("budget", ["Not submitted: it did not fit the last run's " +
      "budget" + (latest.budget_usd != null ? " ($" + latest.budget_usd.toFixed(2) + ")" : "") +
      ". A larger --budget, or none: ", command("run")]);
    case "stopped": return line("stopped", ["Not submitted: the last run stopped submitting (" +
      (latest.stop_reason || "interrupted") + "). Once that is fixed, ", command("run"),
      " goes on." + dup]);
    case "flight": return line("flight", [(job.task_id ? "In flight: task " + job.task_id +
      " is paid and followed on APIXO. " : "In flight: its submit was on the wire when the " +
      "run ended. ") + "The next ", command("run"), " follows it, not charged again."]);
    case "download": return line("download", ["Paid, download given up: " +
      urlLeft(job.expires_at) + ". ", command("download"), " fetches it, not charged again."]);
  }
  return null;
}

function sources(job) {
  const box = el("div", {"class": "sources"});
  job.images.forEach((url, i) => {
    const label = "source image " + (i + 1);
    if (/^https?:\/\//i.test(url)) {
      // Only web URLs become links: a javascript: URL in a job file must never be one.
      const a = el("a", {"href": url, "target": "_blank", "rel": "noopener noreferrer",
        "title": url});
      a.appendChild(el("img", {"src": url, "loading": "lazy", "alt": label,
        "referrerpolicy": "no-referrer", "width": "64", "height": "64"}));
      box.appendChild(a);
    } else {
      box.appendChild(el("span", {"title": url}, label + ": " + url));
    }
  });
  return box;
}

function card(job) {
  const c = el("article", {"class": "card", "data-id": job.id, "data-state": job.state});
  if (job.wait) c.setAttribute("data-wait", job.wait);
  const videos = el("div", {"class": "videos"});
  if (job.files.length) {
    for (const f of job.files) {
      videos.appendChild(el("video", {"controls": "", "preload": "metadata", "src": relative(f)}));
    }
  } else {
    videos.appendChild(el("div", {"class": "none"}, missing(job)));
  }
  c.appendChild(videos);
  const head = el("div", {}, null);
  head.appendChild(el("span", {"class": "id"}, job.id));
  head.appendChild(el("span", {"class": "state " + job.state}, job.state));
  c.appendChild(head);
  const next = why(job);
  if (next) c.appendChild(next);
  c.appendChild(el("div", {"class": "prompt"}, job.prompt));
  if (job.images.length) c.appendChild(sources(job));
  const dl = el("dl");
  const rows = [["model", job.model], ["mode", job.mode],
    ["duration", job.duration == null ? null : job.duration + " s"],
    ["shape", job.shape], ["sound", job.sound == null ? null : (job.sound ? "on" : "off")],
    ["cfg_scale", job.cfg], ["negative", job.negative], ["seed", job.seed],
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
  const add = (text, key) => facts.appendChild(el("span", key ? {"data-fact": key} : {}, text));
  for (const s of ["done", "failed", "expired", "pending"]) add((META.counts[s] || 0) + " " + s);
  const unknown = META.unknown_price_jobs;
  add(unknown ? "spent ~$" + META.spent_usd.toFixed(2) + " at known prices + " +
    plural(unknown, "job") + " of unknown price" :
    "spent ~$" + META.spent_usd.toFixed(2) + " (estimated)", "spend");
  // The last run that did work: a rerun with nothing to do took no time and says nothing.
  const work = META.last_run, latest = META.latest_run;
  if (work) {
    add("last run " + when(work.ended_at) + " took " + human(work.wall_s) + ", " +
      work.submitted + " submitted", "last-run");
  }
  if (latest && work && latest.ended_at > work.ended_at) {
    add("run again " + when(latest.ended_at) + ": nothing to do", "latest-run");
  } else if (latest && !work) {
    add("last run " + when(latest.ended_at) + ": no job moved", "latest-run");
  }
  if (META.learned_rpm) add("account ~" + META.learned_rpm + " requests/min");
  if (META.learned_slots) add("account ~" + META.learned_slots + " tasks at once");
  add("made " + when(META.made_at));
}

function ids(jobs) {
  return el("div", {"class": "ids"}, jobs.slice(0, 20).map(j => j.id).join(", ") +
    (jobs.length > 20 ? ", ... (" + jobs.length + " in all)" : ""));
}

function attention() {
  const failed = JOBS.filter(j => j.state === "failed");
  const expired = JOBS.filter(j => j.state === "expired");
  const gaveUp = JOBS.filter(j => j.wait === "download");
  const box = document.getElementById("attention");
  const told = [[failed, "failed"], [expired, "expired"], [gaveUp, "download given up"]]
    .filter(([jobs]) => jobs.length).map(([jobs, what]) => jobs.length + " " + what);
  if (!told.length) return;
  box.appendChild(el("h2", {}, "Needs attention: " + told.join(", ")));
  if (failed.length) {
    const byCode = new Map();
    for (const j of failed) {
      const code = j.fail_code || "UNKNOWN";
      if (!byCode.has(code)) byCode.set(code, []);
      byCode.get(code).push(j);
    }
    for (const [code, jobs] of byCode) {
      const g = el("div", {"class": "group failed", "data-code": code});
      g.appendChild(el("strong", {}, code + " x" + jobs.length));
      g.appendChild(el("div", {}, jobs[0].fail_msg || ""));
      g.appendChild(ids(jobs));
      box.appendChild(g);
    }
    const retry = el("p", {"data-kind": "failed"},
      "To submit the failed jobs again (each is charged again): ");
    retry.appendChild(command("retry_failed"));
    // A refused input sent unchanged is refused (and paid) again: --retry-failed waits
    // for it to change unless its code is named.
    retry.append(". A job whose input APIXO refused is sent again once its input " +
      "changed; --fail-code CODE narrows the retry to one code and sends those as they are.");
    box.appendChild(retry);
  }
  if (expired.length) {
    const g = el("div", {"class": "group expired", "data-kind": "expired"});
    g.appendChild(el("strong", {}, "expired x" + expired.length));
    g.appendChild(el("div", {}, "Their result URLs expired before they were downloaded: " +
      "APIXO no longer holds these videos."));
    g.appendChild(ids(expired));
    const again = el("p", {}, "To generate them again (new tasks, each charged again): ");
    again.appendChild(command("retry_expired"));
    g.appendChild(again);
    box.appendChild(g);
  }
  if (gaveUp.length) {
    const g = el("div", {"class": "group download", "data-kind": "download"});
    g.appendChild(el("strong", {}, "download given up x" + gaveUp.length));
    const soonest = gaveUp.reduce((m, j) => Math.min(m, j.expires_at ?? Infinity), Infinity);
    g.appendChild(el("div", {}, "Paid, their results were not downloaded" +
      (Number.isFinite(soonest) ? "; the first: " + urlLeft(soonest) : "") + "."));
    g.appendChild(ids(gaveUp));
    const fetch = el("p", {}, "To fetch them while their URLs live (not charged again): ");
    fetch.appendChild(command("download"));
    g.appendChild(fetch);
    box.appendChild(g);
  }
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
