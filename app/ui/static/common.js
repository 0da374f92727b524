// What every dashboard page uses (window.tj): API calls that carry the CSRF token, fragments of
// server-rendered HTML, times in the browser's zone, and the page's own data.
(function () {
  "use strict";

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": csrf(), Accept: "application/json" };
    const options = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const detail = (await response.json()).detail;
        message = typeof detail === "string" ? detail : detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ");
      } catch (_) { /* not JSON: keep the status line */ }
      throw new Error(message);
    }
    return response.status === 204 ? null : response.json();
  }

  function localTimes(root) {
    for (const el of (root || document).querySelectorAll("time[datetime]")) {
      const when = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(when.getTime())) {
        el.title = el.getAttribute("datetime");
        el.textContent = when.toLocaleString();
      }
    }
  }

  // One element of server-rendered HTML (a table row, a header): {status, element}; element is null
  // unless the answer was a 200 (a 404: the thing is gone; a 503 or a 401: try again later).
  async function fragment(path) {
    let response;
    try {
      response = await fetch(path, { credentials: "same-origin" });
    } catch (_) {
      return { status: 0, element: null };
    }
    if (!response.ok) return { status: response.status, element: null };
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const element = template.content.firstElementChild;
    if (element) localTimes(element);
    return { status: response.status, element };
  }

  function pageData() {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  }

  function flash(message, kind) {
    let box = document.getElementById("flash");
    if (!box) {
      box = document.createElement("div");
      box.id = "flash";
      document.querySelector("main").prepend(box);
    }
    box.className = kind || "error";
    box.textContent = message;
  }

  window.tj = Object.assign(window.tj || {}, { api, localTimes, fragment, pageData, flash });
  document.addEventListener("DOMContentLoaded", () => localTimes(document));
})();
