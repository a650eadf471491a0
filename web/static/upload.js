// Upload with progress, then open the new job's page.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const bar = document.getElementById("progress");
  const out = document.getElementById("upload-result");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/uploads");
    xhr.responseType = "json";
    bar.hidden = false; bar.value = 0;
    out.className = "muted"; out.textContent = "Uploading…";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.upload.onload = () => { out.textContent = "Uploaded; checking the files and queueing the job…"; };
    xhr.onload = () => {
      const data = xhr.response || {};
      if (xhr.status === 201) {
        out.textContent = "Job " + data.job.id + " created.";
        location.href = "/jobs/" + encodeURIComponent(data.job.id);
      } else {
        out.className = "error";
        out.textContent = typeof data.detail === "string" ? data.detail : ("upload failed: HTTP " + xhr.status);
      }
    };
    xhr.onerror = () => { out.className = "error"; out.textContent = "cannot reach the server"; };
    xhr.send(new FormData(form));
  });
})();
