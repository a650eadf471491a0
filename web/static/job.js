// Job page: retry / resend buttons, and a reload when the job's state changes.
(function () {
  "use strict";
  const stateEl = document.getElementById("state");
  const result = document.getElementById("action-result");
  const jobId = location.pathname.split("/").pop();
  const shown = stateEl ? stateEl.dataset.state : null;

  for (const btn of document.querySelectorAll("button[data-action]")) {
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      result.textContent = btn.dataset.action + "…";
      try {
        const resp = await fetch(`/api/jobs/${encodeURIComponent(btn.dataset.job)}/${btn.dataset.action}`,
                                 { method: "POST", credentials: "same-origin" });
        const data = await resp.json();
        result.textContent = resp.ok ? data.detail : (data.detail || resp.statusText);
        result.className = resp.ok ? "muted" : "error";
      } catch (e) {
        result.textContent = "cannot reach the server"; result.className = "error";
      }
      btn.disabled = false;
    });
  }

  async function poll() {
    try {
      const resp = await fetch(`/api/jobs/${encodeURIComponent(jobId)}`, { credentials: "same-origin" });
      if (!resp.ok) return;
      const data = await resp.json();
      // a new state always redraws the page; while the job runs, so does each new step
      const running = !["delivered", "failed", "delivery_failed"].includes(shown);
      if (data.job.state !== shown || (running && data.job.updated !== stateEl.dataset.updated)) location.reload();
    } catch (e) { /* server restarting: try again */ }
  }
  if (shown && !["delivered", "failed", "delivery_failed"].includes(shown)) setInterval(poll, 2000);
  else setInterval(poll, 10000);
})();
