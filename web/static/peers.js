// C-ECHO buttons on the peers page.
(function () {
  "use strict";
  for (const btn of document.querySelectorAll("button[data-echo]")) {
    btn.addEventListener("click", async () => {
      const out = document.getElementById("echo-" + btn.dataset.echo);
      btn.disabled = true; out.className = "echo-result muted"; out.textContent = "echo…";
      try {
        const resp = await fetch(`/api/peers/${encodeURIComponent(btn.dataset.echo)}/echo`,
                                 { method: "POST", credentials: "same-origin" });
        const data = await resp.json();
        if (resp.ok && data.ok) { out.className = "echo-result echo-ok"; out.textContent = `Success (${(data.elapsed_s * 1000).toFixed(0)} ms)`; }
        else { out.className = "echo-result echo-bad"; out.textContent = data.detail || resp.statusText; }
      } catch (e) { out.className = "echo-result echo-bad"; out.textContent = "cannot reach the server"; }
      btn.disabled = false;
    });
  }
})();
