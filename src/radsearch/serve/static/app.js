// radsearch web UI: no framework, no external resources (runs inside hospital networks).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { file: null, info: null, blobUrls: [], lastFocus: null };
  const LABEL_KEYS = ["label", "diagnosis", "finding"];
  const ANATOMY_KEYS = ["anatomy", "body_part"];
  const SHOWN_ELSEWHERE = new Set(["rank", "score", "id"]);

  // regions.js: the box on the query, match boxes, why-similar maps and Refine (optional).
  const regions = () => window.radsearchRegions;

  function token() {
    return sessionStorage.getItem("radsearch-token") || "";
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  async function api(url, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, authHeaders());
    const res = await fetch(url, opts);
    if (res.status === 401) {
      $("token-row").hidden = false;
      throw new Error("this server needs an access token: enter it above");
    }
    return res;
  }

  async function apiJson(url, options) {
    const res = await api(url, options);
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      throw new Error("unexpected answer from the server (HTTP " + res.status + ")");
    }
    if (!res.ok) {
      throw new Error((body && body.error) || "HTTP " + res.status);
    }
    return body;
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  function firstOf(hit, keys) {
    for (const k of keys) {
      if (hit[k] !== undefined && hit[k] !== null && hit[k] !== "") return String(hit[k]);
    }
    return "";
  }

  function imageUrl(id, size) {
    return "/api/items/" + encodeURIComponent(id) + "/image" + (size ? "?size=" + size : "");
  }

  async function loadImage(img, id, size) {
    try {
      const res = await api(imageUrl(id, size));
      if (!res.ok) throw new Error("HTTP " + res.status);
      const url = URL.createObjectURL(await res.blob());
      state.blobUrls.push(url);
      img.src = url;
    } catch (e) {
      img.alt = "image not available";
    }
  }

  // -- index information and filter controls --------------------------------------
  async function loadInfo() {
    try {
      const info = await apiJson("/api/info");
      state.info = info;
      $("index-info").textContent =
        info.count.toLocaleString() + " indexed images · encoder " + info.encoder +
        " (" + info.dim + "-d, " + info.index_type + ")";
      $("k").max = String(info.limits.max_k);
      buildFilters(info.filters || {});
      if (regions()) regions().configure(info);
      updateButton();
    } catch (e) {
      $("index-info").textContent = "index information unavailable";
      setStatus(e.message, true);
    }
  }

  function buildFilters(filters) {
    const box = $("filter-controls");
    box.textContent = "";
    for (const [col, values] of Object.entries(filters)) {
      const row = document.createElement("div");
      row.className = "row";
      const label = document.createElement("label");
      label.htmlFor = "filter-" + col;
      label.textContent = col.replace(/_/g, " ");
      const select = document.createElement("select");
      select.id = "filter-" + col;
      select.dataset.column = col;
      const any = document.createElement("option");
      any.value = "";
      any.textContent = "any";
      select.appendChild(any);
      for (const v of values) {
        const opt = document.createElement("option");
        opt.value = v;
        opt.textContent = v;
        select.appendChild(opt);
      }
      row.append(label, select);
      box.appendChild(row);
    }
  }

  // -- choosing a file ----------------------------------------------------------------
  function isBrowserImage(file) {
    return /\.(png|jpe?g|gif|webp|bmp)$/i.test(file.name) || /^image\/(png|jpeg|gif|webp|bmp)$/.test(file.type);
  }

  function chooseFile(file) {
    if (!file) return;
    state.file = file;
    $("drop-text").textContent = file.name + " (" + Math.round(file.size / 1024) + " KiB)";
    const fig = $("query-figure");
    fig.hidden = false;
    $("query-name").textContent = file.name;
    const img = $("query-img");
    if (regions()) regions().reset();
    if (isBrowserImage(file)) {
      const url = URL.createObjectURL(file);
      state.blobUrls.push(url);
      img.src = url;
    } else {
      img.removeAttribute("src");
      img.alt = "preview shown after the search (DICOM / NIfTI)";
    }
    updateButton();
    search();
  }

  // Study mode (study.js) takes every chosen file; otherwise the first is the query.
  function chooseFiles(files) {
    if (window.radsearchStudy && window.radsearchStudy.active()) {
      window.radsearchStudy.choose(files);
    } else {
      chooseFile(files[0]);
    }
  }

  function updateButton() {
    $("search-btn").disabled = !state.file;
  }

  function wireDrop() {
    const drop = $("drop");
    const input = $("file");
    drop.addEventListener("click", () => input.click());
    drop.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        input.click();
      }
    });
    input.addEventListener("change", () => chooseFiles(input.files));
    drop.addEventListener("dragover", (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      if (ev.dataTransfer && ev.dataTransfer.files.length) chooseFiles(ev.dataTransfer.files);
    });
  }

  // -- searching ----------------------------------------------------------------------
  // opts.refine: also send the hits marked relevant / not relevant (regions.js).
  async function search(opts) {
    if (window.radsearchStudy && window.radsearchStudy.active()) return window.radsearchStudy.search();
    if (!state.file) return;
    const refine = !!(opts && opts.refine);
    const form = new FormData();
    form.append("file", state.file, state.file.name);
    form.append("k", $("k").value || "10");
    if ($("slice").value !== "") form.append("slice", $("slice").value);
    form.append("one_per_patient", $("one-per-patient").checked ? "true" : "false");
    form.append("preview", "true");
    for (const sel of document.querySelectorAll("#filter-controls select")) {
      if (sel.value) form.append("where", sel.dataset.column + "=" + sel.value);
    }
    const how = regions() ? regions().addFields(form, refine) : "";
    setStatus("Searching" + how + "...");
    $("search-btn").disabled = true;
    const t0 = performance.now();
    try {
      const result = await apiJson("/api/search", { method: "POST", body: form });
      if (result.query_image) $("query-img").src = result.query_image;
      render(result);
      const ms = Math.round(performance.now() - t0);
      setStatus(result.hits.length + " similar case(s)" + how + " in " + ms + " ms");
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      updateButton();
    }
  }

  function render(result) {
    for (const url of state.blobUrls.splice(0)) {
      if (!$("query-img").src.startsWith(url)) URL.revokeObjectURL(url);
    }
    const sug = $("suggestion");
    if (result.suggestion) {
      const s = result.suggestion;
      sug.hidden = false;
      sug.textContent = "";
      sug.append("Suggested " + s.column.replace(/_/g, " ") + ": ");
      const strong = document.createElement("strong");
      strong.id = "suggestion-value";
      strong.textContent = s.value;
      sug.append(strong, " (" + s.votes + " votes, " + Math.round(s.share * 100) + "% of the hits)");
    } else {
      sug.hidden = true;
    }
    const grid = $("grid");
    grid.textContent = "";
    for (const hit of result.hits) grid.appendChild(card(hit));
    if (!result.hits.length) {
      const li = document.createElement("li");
      li.textContent = "No indexed image matches these filters.";
      grid.appendChild(li);
    }
    if (regions()) regions().rendered(result);
  }

  function pacsLink(hit) {
    const url = hit.viewer_url || hit.pacs_url;
    if (!url || !/^https?:\/\//i.test(url)) return null;
    const a = document.createElement("a");
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.className = "pacs";
    a.textContent = hit.viewer_url ? "open in PACS viewer" : "open in PACS (WADO)";
    a.addEventListener("click", (ev) => ev.stopPropagation());
    a.addEventListener("keydown", (ev) => ev.stopPropagation());
    return a;
  }

  function card(hit) {
    const li = document.createElement("li");
    li.className = "hit";
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    const label = firstOf(hit, LABEL_KEYS);
    const anatomy = firstOf(hit, ANATOMY_KEYS);
    li.setAttribute("aria-label", "Rank " + hit.rank + ", similarity " + hit.score.toFixed(3) +
      (label ? ", " + label : "") + ". Press Enter to enlarge.");
    li.dataset.id = hit.id;

    const thumb = document.createElement("div");
    thumb.className = "thumb-wrap";
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = label ? "similar case: " + label : "similar case";
    loadImage(img, hit.id, 256);
    thumb.appendChild(img);

    const body = document.createElement("div");
    body.className = "body";
    const top = document.createElement("div");
    top.className = "top";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + hit.rank;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    top.append(rank, score);
    const lab = document.createElement("div");
    lab.className = "label";
    lab.textContent = label || "(no label)";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = [hit.modality, anatomy].filter(Boolean).join(" · ");
    const who = document.createElement("div");
    who.className = "meta";
    const patient = hit.patient_id ? "patient " + hit.patient_id : "";
    const study = hit.study_uid ? "study " + hit.study_uid : (hit.group_id ? "group " + hit.group_id : "");
    who.textContent = [patient, study].filter(Boolean).join(" · ");
    const ident = document.createElement("div");
    ident.className = "id";
    ident.textContent = hit.id;  // the id, never a server path (hits carry none by default)
    body.append(top, lab, meta, who, ident);
    const link = pacsLink(hit);
    if (link) body.appendChild(link);
    li.append(thumb, body);
    if (regions()) regions().decorate(li, hit, thumb);

    li.addEventListener("click", () => openViewer(hit, li));
    li.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        openViewer(hit, li);
      }
    });
    return li;
  }

  // -- enlarged view ----------------------------------------------------------------
  function openViewer(hit, origin) {
    state.lastFocus = origin;
    const dlg = $("viewer");
    $("viewer-title").textContent = "#" + hit.rank + " · " + (firstOf(hit, LABEL_KEYS) || hit.id);
    const img = $("viewer-img");
    img.removeAttribute("src");
    img.alt = "enlarged case " + hit.id;
    loadImage(img, hit.id, 768);
    const dl = $("viewer-meta");
    dl.textContent = "";
    const rows = [["id", hit.id], ["score", hit.score.toFixed(4)]];
    for (const [k, v] of Object.entries(hit)) {
      if (!SHOWN_ELSEWHERE.has(k) && v !== "" && v !== null) rows.push([k, String(v)]);
    }
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k.replace(/_/g, " ");
      const dd = document.createElement("dd");
      if ((k === "viewer_url" || k === "pacs_url") && /^https?:\/\//i.test(v)) {
        const a = document.createElement("a");
        a.href = v;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        a.textContent = v;
        dd.appendChild(a);
      } else {
        dd.textContent = v;
      }
      dl.append(dt, dd);
    }
    dlg.showModal();
    $("viewer-close").focus();
  }

  function wireViewer() {
    const dlg = $("viewer");
    $("viewer-close").addEventListener("click", () => dlg.close());
    dlg.addEventListener("click", (ev) => {
      if (ev.target === dlg) dlg.close();
    });
    dlg.addEventListener("close", () => {
      if (state.lastFocus) state.lastFocus.focus();
    });
  }

  function wireForm() {
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      search();
    });
    $("token").addEventListener("change", () => {
      sessionStorage.setItem("radsearch-token", $("token").value.trim());
      setStatus("");
      loadInfo();
    });
  }

  window.radsearch = {
    api, apiJson, loadImage, setStatus, firstOf, search, LABEL_KEYS,
    queryFile: () => state.file,
  };

  document.addEventListener("DOMContentLoaded", () => {
    wireDrop();
    wireViewer();
    wireForm();
    loadInfo();
  });
})();
