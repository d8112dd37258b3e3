// Regions in the radsearch web UI: a box on the query image (dragged with the mouse or
// typed into x0/y0/x1/y1) makes the search a region query; each hit shows where it
// matched (its match_box, scaled from the hit's pixels to the thumbnail), a "Why
// similar?" control (POST /api/explain as a PNG, shown beside the query) and relevant /
// not relevant toggles that "Refine" sends back. Uses app.js's helpers (window.radsearch).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const FIELDS = ["roi-x0", "roi-y0", "roi-x1", "roi-y1"];
  const MIN_DRAG_PX = 4; // a shorter drag is a click, not a box
  const st = { enabled: false, size: null, drag: null, marks: new Map(), explainUrl: null };

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // The query's pixels as the server searched them (its query_size; the image's own size
  // before the first answer): the frame of the ROI.
  function querySize() {
    if (st.size) return st.size;
    const img = $("query-img");
    return img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
  }

  function roi() {
    const v = FIELDS.map((id) => $(id).value.trim());
    if (v.some((x) => x === "")) return null;
    const n = v.map(Number);
    return n.every(Number.isFinite) ? n.map(Math.round) : null;
  }

  // Position ``el`` over ``box`` (pixels of an image drawn at offset (ox, oy) inside a
  // frame fw x fh pixels large), in percentages of the frame: exact at any size.
  function place(el, box, fw, fh, ox, oy) {
    const [x0, y0, x1, y1] = box;
    el.style.left = ((ox + x0) / fw) * 100 + "%";
    el.style.top = ((oy + y0) / fh) * 100 + "%";
    el.style.width = ((x1 - x0) / fw) * 100 + "%";
    el.style.height = ((y1 - y0) / fh) * 100 + "%";
  }

  function drawRoi() {
    const box = $("roi-box");
    const r = roi();
    const size = querySize();
    $("roi-clear").disabled = !FIELDS.some((id) => $(id).value !== "");
    if (!st.enabled || !r || !size || r[2] <= r[0] || r[3] <= r[1]) {
      box.hidden = true;
      return;
    }
    place(box, r, size[0], size[1], 0, 0);
    box.hidden = false;
  }

  function setRoi(values) {
    FIELDS.forEach((id, i) => {
      $(id).value = values ? String(values[i]) : "";
    });
    drawRoi();
  }

  // -- dragging a box on the query image ------------------------------------------------
  function fraction(ev) {
    const rect = $("query-img").getBoundingClientRect();
    return {
      x: clamp((ev.clientX - rect.left) / rect.width, 0, 1),
      y: clamp((ev.clientY - rect.top) / rect.height, 0, 1),
      px: ev.clientX,
      py: ev.clientY,
    };
  }

  function boxFrom(a, b) {
    const [w, h] = querySize();
    const x0 = Math.floor(Math.min(a.x, b.x) * w);
    const y0 = Math.floor(Math.min(a.y, b.y) * h);
    const x1 = Math.max(x0 + 1, Math.ceil(Math.max(a.x, b.x) * w));
    const y1 = Math.max(y0 + 1, Math.ceil(Math.max(a.y, b.y) * h));
    return [x0, y0, Math.min(x1, w), Math.min(y1, h)];
  }

  function wireDrag() {
    const stage = $("roi-stage");
    stage.addEventListener("pointerdown", (ev) => {
      if (!st.enabled || ev.button !== 0 || !querySize()) return;
      ev.preventDefault();
      st.drag = fraction(ev);
      stage.setPointerCapture(ev.pointerId);
    });
    stage.addEventListener("pointermove", (ev) => {
      if (st.drag) setRoi(boxFrom(st.drag, fraction(ev)));
    });
    const finish = (ev) => {
      if (!st.drag) return;
      const a = st.drag;
      const b = fraction(ev);
      st.drag = null;
      if (Math.abs(b.px - a.px) < MIN_DRAG_PX || Math.abs(b.py - a.py) < MIN_DRAG_PX) {
        drawRoi(); // a click: keep whatever box was there
        return;
      }
      setRoi(boxFrom(a, b));
      window.radsearch.search();
    };
    stage.addEventListener("pointerup", finish);
    stage.addEventListener("pointercancel", () => {
      st.drag = null;
    });
  }

  // -- hits: match box, why similar, marks ----------------------------------------------
  function decorate(li, hit, thumb) {
    if (hit.match_box && hit.image_size) {
      const [iw, ih] = hit.image_size;
      const m = Math.max(iw, ih); // the thumbnail is square, the image drawn "contain"
      const box = document.createElement("div");
      box.className = "match-box";
      place(box, hit.match_box, m, m, (m - iw) / 2, (m - ih) / 2);
      thumb.appendChild(box);
      const [x0, y0, x1, y1] = hit.match_box;
      li.setAttribute("aria-label", li.getAttribute("aria-label") +
        " Matched region " + x0 + "," + y0 + " to " + x1 + "," + y1 + ".");
    }
    const bar = document.createElement("div");
    bar.className = "actions";
    if (st.enabled) {
      const why = button("why", "Why similar?", "Why similar: similarity maps of hit #" + hit.rank);
      why.setAttribute("aria-expanded", "false");
      why.setAttribute("aria-controls", "explain");
      why.addEventListener("click", () => explain(hit, why));
      bar.appendChild(why);
    }
    for (const [kind, text] of [["relevant", "Relevant"], ["irrelevant", "Not relevant"]]) {
      const label = (kind === "relevant" ? "Relevant: hit #" : "Not relevant: hit #") + hit.rank;
      const b = button("mark " + kind, text, label);
      b.dataset.kind = kind;
      b.addEventListener("click", () => toggle(hit.id, kind, li));
      bar.appendChild(b);
    }
    li.appendChild(bar);
    showMarks(li, hit.id);
  }

  function button(cls, text, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = text;
    b.setAttribute("aria-label", label);
    // the card itself opens the viewer on click / Enter / Space: not from its buttons
    b.addEventListener("click", (ev) => ev.stopPropagation());
    b.addEventListener("keydown", (ev) => ev.stopPropagation());
    return b;
  }

  function showMarks(li, id) {
    const mark = st.marks.get(id) || "";
    for (const b of li.querySelectorAll("button.mark")) {
      b.setAttribute("aria-pressed", String(b.dataset.kind === mark));
    }
    li.dataset.mark = mark;
  }

  function toggle(id, kind, li) {
    if (st.marks.get(id) === kind) st.marks.delete(id);
    else st.marks.set(id, kind);
    showMarks(li, id);
    updateBar();
  }

  function counts() {
    const kinds = [...st.marks.values()];
    return [kinds.filter((k) => k === "relevant").length, kinds.filter((k) => k !== "relevant").length];
  }

  function updateBar() {
    const [rel, irr] = counts();
    $("feedback-count").textContent = st.marks.size
      ? rel + " relevant, " + irr + " not relevant marked"
      : "Mark hits relevant or not relevant, then Refine.";
    $("refine-btn").disabled = !st.marks.size;
    $("marks-clear").disabled = !st.marks.size;
  }

  async function explain(hit, trigger) {
    const R = window.radsearch;
    const file = R.queryFile();
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("hit_id", hit.id);
    form.append("format", "png");
    const r = roi();
    if (r) form.append("roi", r.join(","));
    if ($("slice").value !== "") form.append("slice", $("slice").value);
    R.setStatus("Comparing the query with #" + hit.rank + "...");
    try {
      const res = await R.api("/api/explain", { method: "POST", body: form });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        throw new Error((body && body.error) || "HTTP " + res.status);
      }
      const url = URL.createObjectURL(await res.blob());
      if (st.explainUrl) URL.revokeObjectURL(st.explainUrl);
      st.explainUrl = url;
      const img = $("explain-img");
      img.alt = "similarity maps: the query (left) and hit #" + hit.rank + " " + hit.id + " (right)";
      img.src = url;
      $("explain-title").textContent = "Why similar: #" + hit.rank + " · " + hit.id;
      $("explain").hidden = false;
      for (const b of document.querySelectorAll("#grid button.why")) {
        b.setAttribute("aria-expanded", String(b === trigger));
      }
      R.setStatus("Similarity maps of #" + hit.rank + (r ? " for the region" : ""));
    } catch (e) {
      R.setStatus(e.message, true);
    }
  }

  function closeExplain() {
    $("explain").hidden = true;
    for (const b of document.querySelectorAll("#grid button.why")) {
      b.setAttribute("aria-expanded", "false");
    }
  }

  // -- hooks called by app.js -------------------------------------------------------------
  function configure(info) {
    st.enabled = !!info.regions;
    $("roi-fields").hidden = !st.enabled || studyMode();
    drawRoi();
  }

  // A new query image: no box, no marks, no maps.
  function reset() {
    st.size = null;
    st.marks.clear();
    setRoi(null);
    closeExplain();
    updateBar();
  }

  // The search form's roi and (refine) marks; returns words for the status line.
  function addFields(form, refine) {
    const r = st.enabled ? roi() : null;
    if (r) form.append("roi", r.join(","));
    const marked = refine && st.marks.size > 0;
    if (marked) {
      for (const [id, kind] of st.marks) form.append(kind, id);
    }
    const [rel, irr] = counts();
    return (r ? " for the region " + r.join(",") : "") +
      (marked ? ", refined with " + rel + " relevant and " + irr + " not relevant" : "");
  }

  function rendered(result) {
    if (result.query_size) st.size = result.query_size;
    const [w, h] = querySize() || [];
    if (w) {
      for (const id of FIELDS) $(id).max = String(id.includes("x") ? w : h);
    }
    drawRoi();
    $("feedback-bar").hidden = false;
    updateBar();
  }

  function studyMode() {
    return window.radsearchStudy && window.radsearchStudy.active();
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireDrag();
    for (const id of FIELDS) $(id).addEventListener("input", drawRoi);
    $("query-img").addEventListener("load", drawRoi);
    $("roi-clear").addEventListener("click", () => {
      setRoi(null);
      $(FIELDS[0]).focus();
      window.radsearch.search();
    });
    $("refine-btn").addEventListener("click", () => window.radsearch.search({ refine: true }));
    $("marks-clear").addEventListener("click", () => {
      st.marks.clear();
      for (const li of document.querySelectorAll("#grid li.hit")) showMarks(li, li.dataset.id);
      updateBar();
    });
    $("explain-close").addEventListener("click", closeExplain);
    $("study-mode").addEventListener("change", () => {
      $("roi-fields").hidden = !st.enabled || studyMode();
      $("feedback-bar").hidden = true;
      closeExplain();
    });
  });

  window.radsearchRegions = { configure, reset, addFields, rendered, decorate };
})();
