// One deployment, per stage and per node, updated while it goes on; cancel, pause, resume and
// roll back.
"use strict";
(() => {
  const table = document.getElementById("dep-nodes");
  const dep = table.dataset.dep;
  const stateEl = document.getElementById("dep-state");
  const pausedEl = document.getElementById("dep-paused");
  const stagesEl = document.getElementById("dep-stages");
  const cancel = document.getElementById("dep-cancel");
  const pause = document.getElementById("dep-pause");
  const resume = document.getElementById("dep-resume");
  const going = (state) => state === "in_progress" || state === "paused";
  const timings = (t) => Object.entries(t).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ");
  const counts = (c) => Object.entries(c).map(([k, v]) => `${k} ${v}`).join(", ");

  function row(cells, data) {
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, data);
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }

  function render(shown) {
    const d = shown.deployment;
    stateEl.textContent = d.state;
    stateEl.className = `state-${d.state}`;
    if (pausedEl) pausedEl.textContent = d.paused || "-";
    if (cancel) cancel.disabled = !going(d.state);
    if (pause) pause.disabled = d.state !== "in_progress";
    if (resume) resume.disabled = d.state !== "paused";
    if (stagesEl) stagesEl.tBodies[0].replaceChildren(...d.stages.map((s) => row([
      [`${s.index + 1} of ${d.stages.length}`], [s.state, `state state-${s.state}`],
      [s.sites.join(", ")], [counts(s.counts)],
    ], {stage: s.index + 1})));
    table.tBodies[0].replaceChildren(...shown.nodes.map((n) => row([
      [n.site], [n.stage + 1, "stage"], [n.revision || "-", "revision"],
      [n.state, `state state-${n.state}`], [n.error || ""], [timings(n.timings_ms)], [n.updated],
    ], {site: n.site})));
    return d.state;
  }

  // The console pushes each move of this deployment (the fleet's stage events, its nodes'
  // reports) as a server-sent event; the page asks deployment.show then. A slow poll
  // (data-poll-s) stays as a fallback, and a fast one while the stream is down.
  const pollS = Number(table.dataset.pollS) || 15;
  const liveEl = document.getElementById("dep-live");
  let streamUp = false, timer = null, state = stateEl.textContent.trim();

  async function refresh() {
    try {
      state = render(await ef.call("deployment.show", {id: dep}));
    } catch (e) {
      ef.notice(`deployment.show: ${e.message}`);
    }
  }

  function schedule() {
    clearTimeout(timer);
    const s = streamUp ? pollS : going(state) ? 1 : 5;
    timer = setTimeout(async () => { await refresh(); schedule(); }, s * 1000);
  }

  function live(up) {
    streamUp = up;
    if (liveEl) liveEl.textContent = up ? "Updates as the deployment moves (live)." : "Reconnecting: asking the fleet every few seconds meanwhile.";
  }

  const events = new EventSource(`/api/deployments/${encodeURIComponent(dep)}/events`);
  // on (re)open: once more, for what moved before the stream was there
  events.onopen = async () => { live(true); await refresh(); schedule(); };
  events.onerror = () => { live(false); schedule(); };
  events.onmessage = async (ev) => {
    await refresh();
    schedule();
    // the fleet records a node's report in its own time, maybe after the console heard it
    if (JSON.parse(ev.data).what === "reported") setTimeout(refresh, 1000);
  };
  refresh().then(schedule);

  if (cancel) cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel deployment ${dep}? Nodes still applying it go back to what they ran.`)) return;
    const r = await ef.command("deployment.cancel", {id: dep});
    if (r) render(r);
  });
  // Pause lets the stage in progress finish and holds the next one; Resume lets it go on.
  for (const [button, cmd] of [[pause, "deployment.pause"], [resume, "deployment.resume"]]) {
    if (button) button.addEventListener("click", async () => {
      const r = await ef.command(cmd, {id: dep});
      if (r) render(r);
    });
  }
  for (const b of document.querySelectorAll("button.rollback")) {
    b.addEventListener("click", async () => {
      if (!confirm(`Deploy ${b.dataset.flow}@${b.dataset.to} to every node that runs ${b.dataset.flow}?`)) return;
      const r = await ef.command("rollback", {flow: b.dataset.flow, to: Number(b.dataset.to)});
      if (r && r.deployment) location.href = `/deployments/${r.deployment.id}`;
    });
  }
})();
