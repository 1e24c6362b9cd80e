// The new-deployment form: each field with data-arg is one argument of the `deploy` command
// (`a.b` names field b of the object argument a).
"use strict";
(() => {
  const form = document.getElementById("deploy-form");
  if (!form) return;
  const plan = document.getElementById("deploy-plan");

  function args() {
    const target = form.querySelector("input[name=target]:checked").value;
    const out = {};
    for (const el of form.querySelectorAll("[data-arg]")) {
      if (el.dataset.when && el.dataset.when !== target) continue;
      let v = el.value.trim();
      if (v === "") continue;
      if (el.dataset.type === "list") v = v.split(",").map((s) => s.trim()).filter(Boolean);
      else if (el.dataset.type === "number") v = Number(v);
      else if (el.dataset.type === "json") v = JSON.parse(v);
      else if (el.dataset.type === "bool") v = el.checked;
      const [key, field] = el.dataset.arg.split(".");
      if (field) out[key] = {...out[key], [field]: v};
      else out[key] = v;
    }
    // an abort threshold or a soak without stages: still staged, as one stage of every node
    if (out.strategy && !out.strategy.stages) out.strategy.stages = ["100%"];
    return out;
  }

  function describe(rows) {
    const stages = [];
    for (const p of rows) (stages[p.stage] ||= []).push(p);
    return stages.map((members, i) => [
      `stage ${i + 1} of ${stages.length}: ${members.map((p) => p.site).join(", ")}`,
      ...members.map((p) => `  ${p.site}: revision ${p.revision}, ${p.changes}` +
        (p.superseded ? ` (supersedes ${p.superseded})` : "")),
    ].join("\n")).join("\n") || "no node";
  }

  document.getElementById("deploy-dry").addEventListener("click", async () => {
    const r = await ef.command("deploy", {...args(), dry_run: true});
    if (!r) return;
    plan.hidden = false;
    plan.textContent = describe(r.plan);
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await ef.command("deploy", args());
    if (r && r.deployment) location.href = `/deployments/${r.deployment.id}`;
  });
})();
