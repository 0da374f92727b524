// Compare: each series of the chosen jobs overlaid on one chart, a line per job (fetched downsampled
// to the chart's width, and per epoch for x by epoch).
(function () {
  "use strict";
  const tj = window.tj;
  const { jobs, names } = tj.pageData();
  const container = document.getElementById("charts");
  const noMetrics = document.getElementById("no-metrics");
  const fetched = {};  // job id -> {steps, epochs}
  const options = tj.chartControls(() => draw());

  function draw() {
    const groups = {};
    jobs.forEach((id, i) => {
      const mine = fetched[id];
      if (!mine) return;
      const source = options.x === "epoch" ? mine.epochs.series : mine.steps.series;
      for (const [name, points] of Object.entries(source)) {
        (groups[name] = groups[name] || []).push({ label: `job ${id}${names[i] ? ` · ${names[i]}` : ""}`, ...tj.columns(points, options.x) });
      }
    });
    noMetrics.hidden = tj.chartsRender(container, groups, options) > 0;
  }

  async function start() {
    const size = tj.maxPoints(container);
    await Promise.all(jobs.map(async (id) => {
      const [steps, epochs] = await Promise.all([
        tj.api("GET", `/jobs/${id}/metrics?max_points=${size}`),
        tj.api("GET", `/jobs/${id}/metrics?per_epoch=true&max_points=${size}`),
      ]);
      fetched[id] = { steps, epochs };
    }));
    draw();
  }
  start().catch((error) => tj.flash(`could not load the metrics: ${error.message}`));
})();
