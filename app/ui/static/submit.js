// The submit page: a template fills the editor (as JSON or YAML, whichever is chosen: the server wrote
// both); an error's line link puts the cursor on that line.
(function () {
  "use strict";
  const { templates } = window.tj.pageData();
  const text = document.getElementById("spec-text");
  const choose = document.getElementById("template");

  function format() { return document.querySelector('input[name="format"]:checked').value; }

  function fill() {
    const chosen = templates[choose.value];
    if (chosen) text.value = chosen[format()];
  }
  choose.addEventListener("change", fill);
  for (const radio of document.querySelectorAll('input[name="format"]')) radio.addEventListener("change", fill);

  document.getElementById("errors").addEventListener("click", (event) => {
    const link = event.target.closest("a.line");
    if (!link) return;
    event.preventDefault();
    const line = Number(link.closest("[data-line]").dataset.line);
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  });
})();
