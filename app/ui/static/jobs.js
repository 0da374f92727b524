// The jobs table, live: each status event from GET /events redraws that job's row (the server renders
// it: /ui/fragments/jobs/ID/row); a new job that fits the filters appears at the top of the first page.
(function () {
  "use strict";
  const table = document.getElementById("jobs");
  if (!table) return;
  const rows = table.tBodies[0];
  const live = document.getElementById("live-state");
  const wanted = {
    status: table.dataset.filterStatus,
    kind: table.dataset.filterKind,
    name: (table.dataset.filterName || "").toLowerCase(),
    owner: table.dataset.filterOwner,
  };
  const firstPage = table.dataset.firstPage === "true";
  const due = new Map();

  function fits(row) {
    return (!wanted.status || row.dataset.status === wanted.status)
      && (!wanted.kind || row.dataset.kind === wanted.kind)
      && (!wanted.name || row.dataset.name.toLowerCase().includes(wanted.name))
      && (!wanted.owner || wanted.owner === "*" || row.dataset.owner === wanted.owner);
  }

  async function redraw(id) {
    const { status, element: row } = await window.tj.fragment(`/ui/fragments/jobs/${id}/row`);
    const old = document.getElementById(`job-${id}`);
    if (!row) {
      if (old && status === 404) old.remove();  // deleted; anything else: the next event tries again
      counted();
      return;
    }
    if (old) {
      if (!fits(row)) old.remove();  // no longer what the filters ask for (a running job that ended)
      else {
        row.querySelector(".pick").checked = old.querySelector(".pick").checked;
        old.replaceWith(row);
      }
      counted();
      return;
    }
    if (!firstPage || !fits(row)) return;
    const before = [...rows.rows].find((r) => Number(r.dataset.id) < id) || null;
    rows.insertBefore(row, before);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  }

  function soon(id) {  // several events of one job within 100 ms: one redraw
    if (due.has(id)) return;
    due.set(id, setTimeout(() => { due.delete(id); redraw(id); }, 100));
  }

  const source = new EventSource("/events");
  source.addEventListener("status", (event) => soon(JSON.parse(event.data).id));
  source.addEventListener("open", () => {
    live.textContent = "live";
    // What changed between the page's rendering and the stream's start.
    for (const row of rows.rows) if (["queued", "running"].includes(row.dataset.status)) soon(Number(row.dataset.id));
  });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; });

  const compare = document.getElementById("compare");
  const MAX_COMPARED = 10;
  const picked = () => [...table.querySelectorAll(".pick:checked")].map((box) => Number(box.value)).sort((x, y) => x - y);
  function counted() {
    const n = picked().length;
    compare.disabled = n === 0 || n > MAX_COMPARED;
    compare.textContent = n > MAX_COMPARED ? `Compare at most ${MAX_COMPARED}` : n ? `Compare ${n} selected` : "Compare selected";
  }
  table.addEventListener("change", counted);
  compare.addEventListener("click", () => { window.location.href = `/ui/compare?ids=${picked().join(",")}`; });
})();
