// The message inspector: topic tree with rates, the last messages of one topic decoded.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const tree = $("topic-tree"), list = $("messages");
  let chosen = new URLSearchParams(location.search).get("topic");
  let paused = false;

  async function getJson(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return r.json();
  }

  function renderTree(topics) {
    // one row per topic, indented by level under its parents' names
    const rows = [];
    let previous = [];
    for (const t of topics) {
      const parts = t.topic.split("/");
      let same = 0;
      while (same < parts.length - 1 && previous[same] === parts[same]) same++;
      for (let i = same; i < parts.length - 1; i++) rows.push({level: i, name: parts[i]});
      rows.push({level: parts.length - 1, name: parts[parts.length - 1], topic: t});
      previous = parts;
    }
    tree.replaceChildren(...rows.map((r) => {
      const li = document.createElement("li");
      li.style.paddingLeft = `${r.level * 0.9}em`;
      if (!r.topic) { li.textContent = r.name; li.className = "branch"; return li; }
      const a = document.createElement("a");
      a.href = `?topic=${encodeURIComponent(r.topic.topic)}`;
      a.textContent = r.name;
      a.dataset.topic = r.topic.topic;
      a.addEventListener("click", (ev) => { ev.preventDefault(); choose(r.topic.topic); });
      if (r.topic.topic === chosen) a.className = "chosen";
      const rate = document.createElement("span");
      rate.className = "rate";
      rate.textContent = ` ${r.topic.rate.toFixed(1)}/s · ${r.topic.count}${r.topic.retained ? " · retained" : ""}${r.topic.errors ? ` · ${r.topic.errors} bad` : ""}`;
      li.append(a, rate);
      return li;
    }));
  }

  function renderMessages(messages) {
    list.replaceChildren(...messages.map((m) => {
      const box = document.createElement("article");
      box.className = "message";
      const head = document.createElement("header");
      head.textContent = `${ef.time(m.t_ns)} · ${m.content_type || "no content type"} · ${m.size} B${m.retain ? " · retained" : ""}`;
      const copy = document.createElement("button");
      copy.textContent = "Copy";
      const pre = document.createElement("pre");
      pre.className = "decoded";
      pre.textContent = m.error ? `cannot decode: ${m.error}` : JSON.stringify(m.body, null, 2);
      copy.addEventListener("click", () => copyText(pre.textContent, copy));
      head.append(" ", copy);
      box.append(head, pre);
      return box;
    }));
  }

  async function copyText(text, button) {
    await ef.copy(text);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  async function refresh() {
    if (paused) return;
    try {
      const q = new URLSearchParams({contains: $("topic-filter").value});
      renderTree((await getJson(`/api/inspector/topics?${q}`)).topics);
      if (chosen) {
        const m = await getJson(`/api/inspector/messages?${new URLSearchParams({topic: chosen})}`);
        renderMessages(m.messages);
      }
    } catch (e) { /* the next refresh tries again */ }
  }

  function choose(topic) {
    chosen = topic;
    $("topic-title").textContent = topic;
    history.replaceState(null, "", `?topic=${encodeURIComponent(topic)}`);
    refresh();
  }

  $("inspect-pause").addEventListener("click", () => {
    paused = !paused;
    $("inspect-pause").textContent = paused ? "Resume" : "Pause";
    $("inspect-pause").setAttribute("aria-pressed", String(paused));
  });
  $("topic-filter").addEventListener("input", refresh);
  if (chosen) $("topic-title").textContent = chosen;
  refresh();
  setInterval(refresh, 1000);
})();
