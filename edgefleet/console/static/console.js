// Shared by every page: the one way a page asks the fleet for something.
"use strict";
const ef = {
  async call(cmd, args) {
    const r = await fetch(`/api/cmd/${cmd}`, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(args || {}),
    });
    const body = await r.json().catch(() => ({error: {code: "internal", message: `HTTP ${r.status}`}}));
    if (!r.ok) throw Object.assign(new Error(body.error.message), {code: body.error.code, status: r.status});
    return body.result;
  },
  // Runs a command that changes something; tells the person what went wrong instead of failing.
  async command(cmd, args) {
    try {
      return await ef.call(cmd, args);
    } catch (e) {
      ef.notice(`${cmd}: ${e.message}`);
      return null;
    }
  },
  notice(text) {
    let box = document.getElementById("notice");
    if (!box) {
      box = document.createElement("p");
      box.id = "notice";
      box.className = "error";
      box.setAttribute("role", "alert");
      document.querySelector("main").prepend(box);
    }
    box.textContent = text;
  },
  // The clipboard where the page may write it (http://127.0.0.1 or https); else the old way
  // through a selected textarea (plain http to another host has no clipboard API).
  async copy(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
  },
  time(ns) {
    return new Date(Number(ns) / 1e6).toISOString().replace("T", " ").replace("Z", "");
  },
};
for (const cell of document.querySelectorAll("td.time[data-ns]")) cell.textContent = ef.time(cell.dataset.ns);
