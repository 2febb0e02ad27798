"""Open Snakemake's HTML report in headless Chromium and read back what it renders.

The report is a React app whose results (figures as data URIs, captions as HTML) are embedded in
the page and shown on clicks. `render_report` loads a copy of the report with a probe script added
at its end: the probe drives the app as the clicks would (open a category, show a result's
details, display a figure), waits for the browser to decode every image, and writes what it found
as JSON into the page, which Chromium's --dump-dom then prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# `app`, `results` and `categories` are the report's own globals (snakemake/report/html_reporter).
PROBE = r"""
<script>
(function () {
  var found = {categories: Object.keys(categories), tables: {}, images: {}, shown_image: null};
  var step = 0;
  function finish() {
    var out = document.createElement("pre");
    out.id = "crisp-probe";
    out.textContent = JSON.stringify(found);
    document.body.appendChild(out);
  }
  function tableOf(root) {
    var rows = [];
    root.querySelectorAll("tr").forEach(function (tr) {
      rows.push(Array.from(tr.querySelectorAll("th, td")).map(function (cell) { return cell.textContent.trim(); }));
    });
    return rows;
  }
  var tablePaths = Object.keys(results).filter(function (path) { return /\.csv$/.test(path); });
  var imagePaths = Object.keys(results).filter(function (path) { return results[path].mime_type === "image/png"; });
  var pending = imagePaths.length;
  imagePaths.forEach(function (path) {
    var image = new Image();
    image.onload = function () { found.images[path] = [image.naturalWidth, image.naturalHeight]; pending--; };
    image.onerror = function () { found.images[path] = [0, 0]; pending--; };
    image.src = results[path].data_uri;
  });
  function next() {
    if (step < tablePaths.length) {  // one table at a time: open its category, then its details
      var path = tablePaths[step];
      app.showCategory(results[path].category || "Tables");
      app.showResultInfo(path);
      setTimeout(function () {
        var captions = document.querySelectorAll("table.docutils");
        found.tables[path] = captions.length ? tableOf(captions[captions.length - 1]) : [];
        step++;
        next();
      }, 300);
    } else if (step === tablePaths.length) {  // then one figure in the main view, as its button does
      step++;
      if (imagePaths.length) {
        app.setView({content: "img", contentPath: results[imagePaths[0]].data_uri, resultPath: imagePaths[0]});
      }
      setTimeout(next, 300);
    } else if (pending > 0) {
      setTimeout(next, 100);
    } else {
      var shown = document.querySelector("#app img[src^='data:image/png']");
      found.shown_image = shown ? [shown.naturalWidth, shown.naturalHeight] : null;
      finish();
    }
  }
  setTimeout(next, 300);
})();
</script>
"""


def chromium() -> str:
    """The Chromium executable; a skip without one, a failure under CI (which installs it)."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = "headless Chromium is needed to render the report (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_report(report: Path, scratch: Path, timeout: float = 120) -> dict:
    """What the report shows in a browser: its categories, every CSV result's caption table (rows of
    cell texts, header first) and every PNG's decoded size (0 x 0 when it does not decode)."""
    scratch.mkdir(parents=True, exist_ok=True)
    page = report.read_text(errors="replace")
    end = page.rfind("</body>")
    probe = scratch / "probe.html"
    probe.write_text(page[:end] + PROBE + page[end:])
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={scratch / 'profile'}", "--virtual-time-budget=30000",
        "--dump-dom", probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    match = re.search(r'<pre id="crisp-probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert match, f"the report's probe did not finish in Chromium (exit {result.returncode}):\n{result.stderr[-3000:]}"
    return json.loads(html.unescape(match.group(1)))
