// One deployment, per node, updated while it is in progress; cancel and roll back.
"use strict";
(() => {
  const table = document.getElementById("dep-nodes");
  const dep = table.dataset.dep;
  const stateEl = document.getElementById("dep-state");
  const cancel = document.getElementById("dep-cancel");
  const timings = (t) => Object.entries(t).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ");

  function render(shown) {
    const d = shown.deployment;
    stateEl.textContent = d.state;
    stateEl.className = `state-${d.state}`;
    if (cancel) cancel.disabled = d.state !== "in_progress";
    const body = table.tBodies[0];
    body.replaceChildren(...shown.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.site = n.site;
      for (const [text, cls] of [[n.site], [n.revision], [n.state, `state state-${n.state}`],
        [n.error || ""], [timings(n.timings_ms)], [n.updated]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    }));
    return d.state;
  }

  async function poll() {
    try {
      const state = render(await ef.call("deployment.show", {id: dep}));
      setTimeout(poll, state === "in_progress" ? 1000 : 5000);
    } catch (e) {
      ef.notice(`deployment.show: ${e.message}`);
      setTimeout(poll, 5000);
    }
  }
  poll();

  if (cancel) cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel deployment ${dep}? Nodes still applying it go back to what they ran.`)) return;
    const r = await ef.command("deployment.cancel", {id: dep});
    if (r) render(r);
  });
  for (const b of document.querySelectorAll("button.rollback")) {
    b.addEventListener("click", async () => {
      if (!confirm(`Deploy ${b.dataset.flow}@${b.dataset.to} to every node that runs ${b.dataset.flow}?`)) return;
      const r = await ef.command("rollback", {flow: b.dataset.flow, to: Number(b.dataset.to)});
      if (r && r.deployment) location.href = `/deployments/${r.deployment.id}`;
    });
  }
})();
