// Charts of metric series with uPlot: one chart per series, each with one or more lines (a job's
// series and its epoch means; or the same series of several jobs). x by step or by epoch, log scale,
// smoothing (an exponential moving average), and uPlot's legend as the hover readout.
// tj.charts[name] = {plot, lines} holds what each chart shows (the tests read it from the page).
(function () {
  "use strict";
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const ORDER = ["train_loss", "test_loss", "val_loss", "train_accuracy", "test_accuracy", "val_accuracy", "lr", "samples_per_second", "epoch_seconds"];
  const charts = {};

  function order(names) {
    const rank = (n) => (ORDER.includes(n) ? ORDER.indexOf(n) : ORDER.length);
    return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }

  function smooth(ys, weight) {
    if (!weight) return ys;
    let mean = null;
    return ys.map((y) => {
      if (y === null || y === undefined) return null;
      mean = mean === null ? y : weight * mean + (1 - weight) * y;
      return mean;
    });
  }

  // Two charts a row on a wide screen, one on a narrow one (each box adds 8 px of padding a side).
  function width(container) {
    const room = container.clientWidth || 900;
    return Math.max(320, Math.min(900, Math.floor(room > 1000 ? (room - 12) / 2 : room) - 20));
  }

  function tick(v) {
    if (v === null || v === undefined) return "";
    const a = Math.abs(v);
    if (a >= 10000) return `${+(v / 1000).toPrecision(3)}k`;
    if (a >= 100 || a === 0) return String(+v.toFixed(0));
    return String(+v.toPrecision(3));
  }

  // lines: [{label, xs, ys, dash}]; options: {x: "step"|"epoch", log, smoothing}
  function table(lines, options) {
    const pairs = lines.map((line) => {
      let ys = smooth(line.ys, line.dash ? 0 : options.smoothing);
      if (options.log) ys = ys.map((y) => (y > 0 ? y : null));
      return [line.xs, ys];
    });
    return pairs.length === 1 ? pairs[0] : uPlot.join(pairs);
  }

  function create(container, name, lines, options) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.series = name;
    container.appendChild(box);
    const series = [{ label: options.x }].concat(lines.map((line, i) => ({
      label: line.label,
      stroke: line.colour || COLOURS[i % COLOURS.length],
      width: line.dash ? 2 : 1.5,
      dash: line.dash ? [6, 4] : undefined,
      points: { show: line.xs.length < 60 },
      spanGaps: true,
      value: (_, v) => (v === null || v === undefined ? "—" : Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(4)),
    })));
    const plot = new uPlot({
      title: name,
      width: width(container),
      height: 240,
      series,
      scales: { x: { time: false }, y: options.log ? { distr: 3 } : {} },
      axes: [{ label: options.x }, { size: 56, values: (u, splits) => splits.map(tick) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { setSelect: [(u) => { if (u.select.width > 0) box.dataset.zoomed = "true"; }] },
    }, table(lines, options), box);
    box.addEventListener("dblclick", () => { delete box.dataset.zoomed; });
    return { plot, box };
  }

  // Draw (or update) one chart per group: groups = {name: lines}.
  function render(container, groups, options) {
    const names = order(Object.keys(groups));
    for (const name of Object.keys(charts)) {
      if (!names.includes(name)) { charts[name].plot.destroy(); charts[name].box.remove(); delete charts[name]; }
    }
    for (const name of names) {
      const lines = groups[name].filter((line) => line.xs.length > 0);
      if (!lines.length) continue;
      const shape = JSON.stringify([lines.map((l) => l.label), options.x, options.log]);
      const chart = charts[name];
      if (chart && chart.shape === shape) {
        chart.plot.setData(table(lines, options), chart.box.dataset.zoomed !== "true");
        chart.lines = lines;
        continue;
      }
      if (chart) { chart.plot.destroy(); chart.box.remove(); }
      charts[name] = Object.assign(create(container, name, lines, options), { shape, lines });
    }
    // Keep the charts in order (a new series may arrive after others).
    for (const name of names) if (charts[name]) container.appendChild(charts[name].box);
    return Object.keys(charts).length;
  }

  function controls(onChange) {
    const options = { x: "step", log: false, smoothing: 0 };
    const x = document.getElementById("x-axis");
    const log = document.getElementById("log-scale");
    const smoothing = document.getElementById("smoothing");
    const shown = document.getElementById("smoothing-value");
    x.addEventListener("change", () => { options.x = x.value; onChange(true); });
    log.addEventListener("change", () => { options.log = log.checked; onChange(false); });
    smoothing.addEventListener("input", () => {
      options.smoothing = Number(smoothing.value);
      shown.textContent = smoothing.value;
      onChange(false);
    });
    return options;
  }

  // A series as columns: [{step, epoch, value}] -> xs, ys (x by step, or by epoch).
  function columns(points, x) {
    return { xs: points.map((p) => (x === "epoch" ? p.epoch : p.step)), ys: points.map((p) => p.value) };
  }

  // Points into a kept series, in step order, no step twice (an event may repeat what a fetch had).
  function append(kept, points) {
    for (const p of points) {
      const last = kept.length ? kept[kept.length - 1] : null;
      if (!last || p.step > last.step) kept.push(p);
    }
  }

  // The last point of each epoch (what ?per_epoch=true gives), kept up to date as points arrive.
  function appendEpochEnd(kept, points) {
    for (const p of points) {
      const last = kept.length ? kept[kept.length - 1] : null;
      if (last && p.step <= last.step) continue;
      if (last && last.epoch === p.epoch) kept[kept.length - 1] = p; else kept.push(p);
    }
  }

  function maxPoints(container) { return Math.max(64, width(container)); }

  window.tj = Object.assign(window.tj || {}, {
    charts, chartsRender: render, chartControls: controls, columns, append, appendEpochEnd, maxPoints,
  });
})();
