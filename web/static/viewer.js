// Slice viewer: the reference series with the label map overlaid, drawn on a canvas.
// Slices come as 8-bit PNGs from /api/jobs/<id>/slices/<plane>/<index>.png (layer=image|labels);
// the label PNG holds the label values (0, 1, 2, 4), coloured here so that toggles and opacity
// need no new request.
(function () {
  "use strict";
  const root = document.getElementById("viewer");
  if (!root) return;
  const job = root.dataset.job;
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  const slider = document.getElementById("slice");
  const sliceLabel = document.getElementById("slice-label");
  const opacity = document.getElementById("opacity");
  const regionsEl = document.getElementById("regions");
  const orientL = document.getElementById("orient-left");
  const orientR = document.getElementById("orient-right");
  const ORIENT = { axial: ["R", "L"], coronal: ["R", "L"], sagittal: ["A", "P"] };
  const MAX_PX = 560;
  let meta = null;
  let plane = "axial";
  const current = { axial: 0, coronal: 0, sagittal: 0 };
  const enabled = new Map();
  const cache = new Map();
  let drawToken = 0;

  function load(layer, index) {
    const key = `${plane}/${index}/${layer}`;
    if (!cache.has(key)) {
      if (cache.size > 240) cache.delete(cache.keys().next().value);
      cache.set(key, new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve(img);
        img.onerror = () => { cache.delete(key); reject(new Error("slice " + key)); };
        img.src = `/api/jobs/${encodeURIComponent(job)}/slices/${plane}/${index}.png?layer=${layer}`;
      }));
    }
    return cache.get(key);
  }

  function overlay(labelsImg) {
    const off = document.createElement("canvas");
    off.width = labelsImg.width; off.height = labelsImg.height;
    const octx = off.getContext("2d");
    octx.drawImage(labelsImg, 0, 0);
    const px = octx.getImageData(0, 0, off.width, off.height);
    const d = px.data;
    const alpha = Math.round((parseInt(opacity.value, 10) / 100) * 255);
    const colours = {};
    for (const r of meta.regions) if (enabled.get(r.value)) colours[r.value] = r.rgb;
    for (let i = 0; i < d.length; i += 4) {
      const c = colours[d[i]];
      if (c) { d[i] = c[0]; d[i + 1] = c[1]; d[i + 2] = c[2]; d[i + 3] = alpha; }
      else { d[i + 3] = 0; }
    }
    octx.putImageData(px, 0, 0);
    return off;
  }

  async function draw() {
    const token = ++drawToken;
    const p = meta.planes[plane];
    const index = current[plane];
    slider.max = p.slices - 1;
    slider.value = index;
    sliceLabel.textContent = `${index + 1} / ${p.slices}`;
    const wmm = p.columns * p.column_mm, hmm = p.rows * p.row_mm;
    const scale = MAX_PX / Math.max(wmm, hmm);
    const W = Math.round(wmm * scale), H = Math.round(hmm * scale);
    let img, lab;
    try { [img, lab] = await Promise.all([load("image", index), load("labels", index)]); }
    catch (e) { return; }
    if (token !== drawToken) return;  // a newer slice was asked for meanwhile
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, 0, 0, W, H);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(overlay(lab), 0, 0, W, H);
    canvas.dataset.plane = plane; canvas.dataset.index = String(index);
    [orientL.textContent, orientR.textContent] = ORIENT[plane];
  }

  function setPlane(name) {
    plane = name;
    for (const b of root.querySelectorAll("button[data-plane]")) b.classList.toggle("active", b.dataset.plane === name);
    draw();
  }

  function step(delta) {
    const n = meta.planes[plane].slices;
    current[plane] = Math.min(n - 1, Math.max(0, current[plane] + delta));
    draw();
  }

  async function init() {
    const resp = await fetch(`/api/jobs/${encodeURIComponent(job)}/viewer`, { credentials: "same-origin" });
    if (!resp.ok) { root.textContent = "The viewer could not load this job's volumes."; return; }
    meta = await resp.json();
    for (const name of Object.keys(meta.planes)) current[name] = meta.planes[name].initial;
    for (const r of meta.regions) {
      enabled.set(r.value, true);
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.dataset.region = r.key;
      box.addEventListener("change", () => { enabled.set(r.value, box.checked); draw(); });
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = `rgb(${r.rgb.join(",")})`;
      label.append(box, sw, document.createTextNode(" " + r.name + (r.present ? "" : " (none)")));
      regionsEl.append(label);
    }
    for (const b of root.querySelectorAll("button[data-plane]")) b.addEventListener("click", () => setPlane(b.dataset.plane));
    slider.addEventListener("input", () => { current[plane] = parseInt(slider.value, 10); draw(); });
    opacity.addEventListener("input", draw);
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY > 0 ? -1 : 1); }, { passive: false });
    canvas.tabIndex = 0;
    canvas.addEventListener("keydown", (e) => {
      if (e.key === "ArrowUp" || e.key === "ArrowRight") { e.preventDefault(); step(1); }
      if (e.key === "ArrowDown" || e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    });
    draw();
  }
  init();
})();
