// Jobs list: filters, paging, and a poll every 3 s for live state.
(function () {
  "use strict";
  const pageSize = parseInt(document.currentScript.dataset.pageSize || "25", 10);
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#jobs tbody");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const info = document.getElementById("pageinfo");
  const refreshed = document.getElementById("refreshed");
  let offset = 0;
  let timer = null;

  // Filters live in the address bar so a filtered view can be bookmarked.
  const params = new URLSearchParams(location.search);
  for (const el of form.elements) { if (el.name && params.has(el.name)) el.value = params.get(el.name); }
  offset = parseInt(params.get("offset") || "0", 10) || 0;

  function query() {
    const q = new URLSearchParams();
    for (const el of form.elements) { if (el.name && el.value) q.set(el.name, el.value); }
    return q;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : text;
    return td;
  }

  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : ""; }

  function render(data) {
    tbody.replaceChildren();
    if (!data.jobs.length) {
      const tr = document.createElement("tr");
      const td = cell("No jobs match.", "muted"); td.colSpan = 8; tr.append(td); tbody.append(tr);
    }
    for (const j of data.jobs) {
      const tr = document.createElement("tr");
      tr.dataset.job = j.id;
      const id = document.createElement("td");
      const a = document.createElement("a"); a.href = "/jobs/" + encodeURIComponent(j.id); a.textContent = j.id;
      id.append(a);
      const st = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "state state-" + j.state; badge.textContent = j.state.replace("_", " ");
      st.append(badge);
      const wt = j.volumes_ml && j.volumes_ml.whole_tumor != null ? j.volumes_ml.whole_tumor.toFixed(1) + " ml" : "";
      tr.append(id, st, cell(j.source), cell(j.calling_ae), cell(when(j.created)), cell(when(j.updated)),
                cell(wt, "num"), cell(j.reason || ""));
      tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.href = a.href; });
      tbody.append(tr);
    }
    const last = Math.min(data.offset + data.jobs.length, data.total);
    info.textContent = data.total ? `${data.offset + 1}–${last} of ${data.total}` : "";
    prev.disabled = data.offset <= 0;
    next.disabled = last >= data.total;
    refreshed.textContent = "updated " + new Date().toLocaleTimeString();
  }

  async function load() {
    const q = query(); q.set("limit", pageSize); q.set("offset", offset);
    try {
      const resp = await fetch("/api/jobs?" + q.toString(), { credentials: "same-origin" });
      if (resp.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); return; }
      const data = await resp.json();
      if (!resp.ok) { refreshed.textContent = data.detail || resp.statusText; return; }
      render(data);
    } catch (e) {
      refreshed.textContent = "cannot reach the server; retrying";
    }
  }

  function restart() {
    const q = query(); if (offset) q.set("offset", offset);
    history.replaceState(null, "", "/" + (q.toString() ? "?" + q.toString() : ""));
    clearInterval(timer); load(); timer = setInterval(load, 3000);
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; restart(); });
  form.addEventListener("reset", () => { setTimeout(() => { offset = 0; restart(); }, 0); });
  form.elements.state.addEventListener("change", () => { offset = 0; restart(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - pageSize); restart(); });
  next.addEventListener("click", () => { offset += pageSize; restart(); });
  restart();
})();
