// A sweep's page: a chart of the metric against each parameter (a point per trial with a value; a
// parameter of text or lists is drawn by its values' order, its names on the axis), the sweep's
// actions, and a reload while it runs and its counts change. tj.sweepCharts[name] = {xs, ys, labels}.
(function () {
  "use strict";
  const tj = window.tj;
  const data = tj.pageData();
  const container = document.getElementById("charts");
  tj.sweepCharts = {};

  function column(name) {
    const rows = data.trials.filter((t) => t.value !== null && t.value !== undefined && name in t.params);
    const raw = rows.map((t) => t.params[name]);
    const numeric = raw.every((v) => typeof v === "number");
    const labels = numeric ? null : [...new Set(raw.map((v) => JSON.stringify(v)))];
    const points = rows.map((t, i) => [numeric ? raw[i] : labels.indexOf(JSON.stringify(raw[i])), t.value]);
    points.sort((a, b) => a[0] - b[0]);
    const xs = points.map((p) => p[0]);
    const log = numeric && xs.length > 1 && xs[0] > 0 && xs[xs.length - 1] / xs[0] >= 100;
    return { xs, ys: points.map((p) => p[1]), labels, log };
  }

  function chart(name) {
    const { xs, ys, labels, log } = column(name);
    tj.sweepCharts[name] = { xs, ys, labels };
    if (!xs.length) return false;
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.parameter = name;
    container.appendChild(box);
    const axis = labels ? { values: (u, splits) => splits.map((v) => (Number.isInteger(v) && labels[v] !== undefined ? labels[v] : "")) } : {};
    const options = {
      title: name,
      width: Math.max(320, Math.min(600, (container.clientWidth || 900) / 2 - 20)),
      height: 260,
      scales: { x: { time: false, distr: log ? 3 : 1, ...(labels ? { range: [-0.5, labels.length - 0.5] } : {}) } },
      axes: [{ label: name, ...axis }, { label: data.metric }],
      series: [{ label: name }, { label: data.metric, stroke: "#2563eb", paths: () => null, points: { show: true, size: 8, fill: "#2563eb" } }],
      legend: { show: true },
    };
    new uPlot(options, [xs, ys], box);
    return true;
  }

  const drawn = data.parameters.map(chart).filter(Boolean).length;
  document.getElementById("no-values").hidden = drawn > 0 || data.parameters.length === 0;

  async function act(method, path, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      await tj.api(method, path);
      window.location.href = method === "DELETE" ? "/ui/sweeps" : window.location.pathname;
    } catch (error) {
      tj.flash(error.message);
    }
  }
  const on = (id, fn) => { const el = document.getElementById(id); if (el) el.addEventListener("click", fn); };
  on("cancel", () => act("POST", `/sweeps/${data.id}/cancel`));
  on("retry", () => act("POST", `/sweeps/${data.id}/retry`));
  on("delete", () => act("DELETE", `/sweeps/${data.id}`, `Delete sweep ${data.id} with all its trials' jobs?`));

  if (data.status === "running") {
    const seen = JSON.stringify(data.counts);
    const poll = async () => {
      try {
        const now = await tj.api("GET", `/sweeps/${data.id}`);
        if (JSON.stringify(now.counts) !== seen || now.status !== data.status) {
          window.location.reload();
          return;
        }
      } catch (_) { /* a 503 or a lost connection: try again */ }
      window.setTimeout(poll, 3000);
    };
    window.setTimeout(poll, 3000);
  }
})();
