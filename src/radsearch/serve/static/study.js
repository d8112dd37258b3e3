// Study mode of the radsearch web UI: several files, a zip of a DICOM series or a NIfTI
// volume in; study cards out (best-matching slice, number of items); a card opens the
// study's items in reading order with a slice scroller. Uses app.js's helpers.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let files = [];

  function active() {
    return $("study-mode").checked;
  }

  function choose(list) {
    files = Array.from(list || []);
    const names = files.slice(0, 3).map((f) => f.name).join(", ");
    $("drop-text").textContent = files.length + " file(s) as one study: " + names +
      (files.length > 3 ? ", ..." : "");
    $("query-figure").hidden = true;
    $("search-btn").disabled = !files.length;
    search();
  }

  async function search() {
    const R = window.radsearch;
    if (!files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("k", $("k").value || "10");
    form.append("one_per_patient", $("one-per-patient").checked ? "true" : "false");
    for (const sel of document.querySelectorAll("#filter-controls select")) {
      if (sel.value) form.append("where", sel.dataset.column + "=" + sel.value);
    }
    R.setStatus("Searching studies...");
    const t0 = performance.now();
    try {
      const result = await R.apiJson("/api/search/study", { method: "POST", body: form });
      render(result);
      const skipped = result.skipped.length
        ? "; left out: " + result.skipped.map((s) => s.file + " (" + s.reason + ")").join(", ")
        : "";
      R.setStatus(result.studies.length + " similar stud(ies) in " +
        Math.round(performance.now() - t0) + " ms" + skipped);
    } catch (e) {
      R.setStatus(e.message, true);
    }
  }

  function render(result) {
    const sug = $("suggestion");
    sug.hidden = !result.suggestion;
    if (result.suggestion) {
      const s = result.suggestion;
      sug.textContent = "Suggested " + s.column.replace(/_/g, " ") + ": " + s.value +
        " (" + s.votes + " of the studies)";
    }
    const grid = $("grid");
    grid.textContent = "";
    for (const s of result.studies) grid.appendChild(card(s));
  }

  function card(s) {
    const R = window.radsearch;
    const li = document.createElement("li");
    li.className = "hit study";
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    const label = R.firstOf(s, R.LABEL_KEYS);
    li.setAttribute("aria-label", "Study rank " + s.rank + ", similarity " + s.score.toFixed(3) +
      ", " + s.items + " items" + (label ? ", " + label : "") + ". Press Enter to scroll it.");
    const best = s.pairs[0];
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = "best-matching slice of the study";
    if (best) R.loadImage(img, best.hit_id, 256);
    const body = document.createElement("div");
    body.className = "body";
    const lines = [
      ["top", "#" + s.rank + "  " + s.score.toFixed(3)],
      ["label", label || "(no label)"],
      ["meta items", s.items + " items" + (s.modality ? " · " + s.modality : "")],
      ["meta pair", best ? "best pair: " + best.query_item + " ~ " + best.hit_id : ""],
      ["id", s.study_id],
    ];
    for (const [cls, text] of lines) {
      const div = document.createElement("div");
      div.className = cls;
      div.textContent = text;
      body.appendChild(div);
    }
    li.append(img, body);
    const open = () => openStudy(s, li, best ? best.hit_id : null);
    li.addEventListener("click", open);
    li.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        open();
      }
    });
    return li;
  }

  async function openStudy(s, origin, bestId) {
    const R = window.radsearch;
    const data = await R.apiJson("/api/studies/" + encodeURIComponent(s.study_id) + "/items");
    const items = data.items;
    const dlg = $("viewer");
    $("viewer-title").textContent = "Study #" + s.rank + " · " + s.study_id;
    $("viewer-meta").textContent = "";
    const slider = $("viewer-slice");
    slider.max = String(items.length - 1);
    slider.value = String(Math.max(0, items.indexOf(bestId)));
    const show = () => {
      const i = Number(slider.value);
      $("viewer-slice-label").textContent = "slice " + (i + 1) + " of " + items.length;
      $("viewer-img").alt = "study item " + items[i];
      R.loadImage($("viewer-img"), items[i], 768);
    };
    slider.oninput = show;
    $("viewer-scroll").hidden = false;
    show();
    dlg.addEventListener("close", () => {
      $("viewer-scroll").hidden = true;
      origin.focus();
    }, { once: true });
    dlg.showModal();
    slider.focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("study-mode").addEventListener("change", () => {
      $("file").multiple = active();
    });
  });

  window.radsearchStudy = { active, choose, search };
})();
