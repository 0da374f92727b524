// A job's page, live: one event stream (GET /jobs/ID/events?start=now) feeds the charts, the log
// tail and the header. The stream opens first; once it is open, the page fetches what the job already
// has (downsampled to the charts' width) while the stream's events wait; then both are merged,
// nothing lost and nothing shown twice.
(function () {
  "use strict";
  const tj = window.tj;
  const id = tj.pageData().job_id;
  const MAX_LOG_LINES = 5000;

  // --- tabs --------------------------------------------------------------------------
  const tabs = [...document.querySelectorAll(".tabs [data-tab]")];
  function show(name) {
    for (const tab of tabs) {
      const on = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      document.getElementById(tab.dataset.tab).hidden = !on;
    }
    if (name === "metrics") draw();
  }
  for (const tab of tabs) tab.addEventListener("click", (e) => { e.preventDefault(); history.replaceState(null, "", `#${tab.dataset.tab}`); show(tab.dataset.tab); });

  // --- metrics -------------------------------------------------------------------------
  const container = document.getElementById("charts");
  const noMetrics = document.getElementById("no-metrics");
  const kept = { steps: {}, epochs: {} };
  const options = tj.chartControls(() => draw());
  let drawing = null;
  let refetching = false;

  function groups() {
    const byEpoch = options.x === "epoch";
    const source = byEpoch ? kept.epochs : kept.steps;
    const out = {};
    for (const [name, points] of Object.entries(source)) {
      const lines = [{ label: name, ...tj.columns(points, options.x) }];
      if (name === "train_loss" && !byEpoch && kept.epochs.train_loss) {
        lines.push({ label: "epoch mean", dash: true, colour: "#111827", ...tj.columns(kept.epochs.train_loss, "step") });
      }
      out[name] = lines;
    }
    return out;
  }

  function draw() {
    if (document.getElementById("metrics").hidden) return;
    noMetrics.hidden = tj.chartsRender(container, groups(), options) > 0;
  }

  function drawSoon() {
    if (drawing) return;
    drawing = setTimeout(() => { drawing = null; draw(); }, 250);
  }

  function addPoints(points) {
    const byName = {};
    for (const p of points) (byName[p.name] = byName[p.name] || []).push(p);
    let tooMany = false;
    for (const [name, list] of Object.entries(byName)) {
      tj.append(kept.steps[name] = kept.steps[name] || [], list);
      tj.appendEpochEnd(kept.epochs[name] = kept.epochs[name] || [], list);
      tooMany = tooMany || kept.steps[name].length > 4 * tj.maxPoints(container);
    }
    if (tooMany && !refetching) fetchMetrics();  // thin a long live series out again, on the server
    drawSoon();
  }

  async function fetchMetrics() {
    refetching = true;
    try {
      const size = tj.maxPoints(container);
      const [steps, epochs] = await Promise.all([
        tj.api("GET", `/jobs/${id}/metrics?max_points=${size}`),
        tj.api("GET", `/jobs/${id}/metrics?per_epoch=true&max_points=${size}`),
      ]);
      const later = (name, source) => (source[name] || []).filter((p) => {
        const fetched = steps.series[name];
        return fetched && fetched.length && p.step > fetched[fetched.length - 1].step;
      });
      for (const name of Object.keys(steps.series)) {
        const newer = later(name, kept.steps);
        kept.steps[name] = steps.series[name];
        kept.epochs[name] = epochs.series[name] || [];
        tj.append(kept.steps[name], newer);
        tj.appendEpochEnd(kept.epochs[name], newer);
      }
    } finally {
      refetching = false;
    }
    draw();
  }

  // --- log -------------------------------------------------------------------------------
  const log = document.getElementById("log");
  const noLogs = document.getElementById("no-logs");
  const follow = document.getElementById("log-follow");
  const search = document.getElementById("log-search");
  const matches = document.getElementById("log-matches");
  let lastSeq = 0;
  let lastAttempt = null;

  function addLines(lines) {
    const wasAtEnd = follow.checked;
    const frag = document.createDocumentFragment();
    for (const line of lines) {
      if (line.seq <= lastSeq) continue;
      lastSeq = line.seq;
      if (line.attempt !== lastAttempt) {
        lastAttempt = line.attempt;
        const mark = document.createElement("div");
        mark.className = "attempt";
        mark.textContent = `attempt ${line.attempt}`;
        frag.appendChild(mark);
      }
      const row = document.createElement("div");
      row.className = `line ${line.stream}`;
      row.dataset.seq = line.seq;
      row.textContent = line.text;
      row.title = `${new Date(line.time).toLocaleString()} · ${line.stream}`;
      frag.appendChild(row);
    }
    log.appendChild(frag);
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    noLogs.hidden = log.childElementCount > 0;
    filter();
    if (wasAtEnd) log.scrollTop = log.scrollHeight;
  }

  function filter() {
    const wanted = search.value.trim().toLowerCase();
    let found = 0;
    for (const row of log.querySelectorAll(".line")) {
      const hit = !wanted || row.textContent.toLowerCase().includes(wanted);
      row.hidden = !hit;
      row.classList.toggle("match", Boolean(wanted) && hit);
      if (wanted && hit) found += 1;
    }
    matches.textContent = wanted ? `${found} matching line${found === 1 ? "" : "s"}` : "";
  }
  search.addEventListener("input", filter);

  // --- header and actions -------------------------------------------------------------------
  const slot = document.getElementById("header-slot");
  let redrawing = null;
  async function redrawHeader() {
    const { element } = await tj.fragment(`/ui/fragments/jobs/${id}/header`);
    if (element) slot.replaceChildren(element);
  }
  function headerSoon() {
    if (redrawing) return;
    redrawing = setTimeout(() => { redrawing = null; redrawHeader(); }, 100);
  }
  slot.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    try {
      if (button.id === "cancel") {
        button.disabled = true;
        await tj.api("POST", `/jobs/${id}/cancel`);
        await redrawHeader();
      } else if (button.id === "delete" && window.confirm(`Delete job ${id} with its metrics, log and checkpoints?`)) {
        await tj.api("DELETE", `/jobs/${id}`);
        window.location.href = "/ui/";
      }
    } catch (error) {
      button.disabled = false;
      tj.flash(error.message);
    }
  });

  // --- the stream ----------------------------------------------------------------------------
  const waiting = [];
  let ready = false;
  function handle(kind, data) {
    if (kind === "metrics") addPoints(data.points);
    else if (kind === "log") addLines(data.lines);
    else if (kind === "status" || kind === "end") headerSoon();
  }
  const source = new EventSource(`/jobs/${id}/events?start=now`);
  let opened = false;
  source.addEventListener("open", () => {
    if (opened) return;  // a reconnect resumes from its Last-Event-ID
    opened = true;
    start().catch((error) => tj.flash(`could not load the job: ${error.message}`));
  });
  for (const kind of ["status", "metrics", "log", "end"]) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      if (ready) handle(kind, data); else waiting.push([kind, data]);
      if (kind === "end") source.close();
    });
  }

  // The stream has its place (the server fixed it before answering: its open event): what the job had
  // before it is fetched now, what comes after arrives as events; both are merged by step and seq.
  async function start() {
    const [, lines] = await Promise.all([fetchMetrics(), tj.api("GET", `/jobs/${id}/logs?tail=2000&limit=2000`)]);
    addLines(lines.lines);
    ready = true;
    for (const [kind, data] of waiting.splice(0)) handle(kind, data);
    draw();
  }
  const asked = location.hash.slice(1);
  show(tabs.some((tab) => tab.dataset.tab === asked) ? asked : "metrics");
  window.tj.jobPage = { kept, lastSeq: () => lastSeq };
})();
