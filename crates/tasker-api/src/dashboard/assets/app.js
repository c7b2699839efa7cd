// Tasker dashboard: the one script. Pages are rendered on the server; this keeps them live
// and sends the operator's actions to the API. No library, no build step.
"use strict";

(function () {
  const HEADER = { "X-Tasker-Dashboard": "1" };

  function toast(text, bad) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = text;
    el.className = bad ? "show bad" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.className = ""; }, 5000);
  }

  async function fetchText(url) {
    const response = await fetch(url, { headers: HEADER, credentials: "same-origin" });
    if (response.status === 401) { location.reload(); throw new Error("signed out"); }
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.text();
  }

  function withPart(url, part) {
    const u = new URL(url, location.href);
    u.searchParams.set("part", part);
    return u.toString();
  }

  // ---- Pages that refresh themselves (tasks list, pools) -------------------------------
  function autoRefresh() {
    const main = document.getElementById("main");
    const every = main && Number(main.dataset.refreshMs);
    if (!every) return;
    setInterval(async () => {
      // Never pull the form out from under someone typing in it.
      if (document.hidden || main.contains(document.activeElement) && document.activeElement.matches("input, select, textarea")) return;
      try { main.innerHTML = await fetchText(withPart(location.href, "main")); } catch (e) { /* next time */ }
    }, every);
  }

  // ---- Confirmed actions (cancel, retry, resolve, requeue, discard) --------------------
  function confirmThen(text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  async function act(button) {
    if (!(await confirmThen(button.dataset.confirm))) return;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, {
        method: button.dataset.method || "POST", headers: HEADER, credentials: "same-origin",
      });
      if (!response.ok) {
        let message = response.status + "";
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        toast(message, true);
        return;
      }
      toast(button.textContent.trim() + ": done");
      if (button.dataset.then) { location.assign(button.dataset.then); return; }
      if (task) { await task.refresh(); } else { location.reload(); }
    } finally {
      button.disabled = false;
    }
  }

  // ---- A task's page: live graph, step panel -------------------------------------------
  let task = null;

  function taskPage() {
    const root = document.getElementById("task");
    if (!root) return null;
    const id = root.dataset.taskId;
    const panel = document.getElementById("step-panel");
    let selected = root.dataset.selected || null;
    let pending = null;
    let last = 0;

    async function openStep(name) {
      selected = name;
      mark();
      // The address names the open step, so a reload or a shared link opens it again.
      const here = new URL(location.href);
      here.searchParams.set("step", name);
      history.replaceState(null, "", here);
      try {
        panel.innerHTML = await fetchText("/tasks/" + id + "/steps/" + encodeURIComponent(name));
      } catch (e) {
        panel.textContent = "Could not load step " + name + ".";
      }
    }

    function mark() {
      for (const node of root.querySelectorAll(".node[data-step]")) {
        node.classList.toggle("selected", node.dataset.step === selected);
      }
    }

    async function refresh() {
      last = Date.now();
      const live = document.getElementById("task-live");
      const html = await fetchText(withPart(location.pathname, "live"));
      const holder = document.createElement("div");
      holder.innerHTML = html;
      // Keep the keyboard where it was: on the same step's node, redrawn.
      const focused = document.activeElement && document.activeElement.closest(".node[data-step]");
      live.replaceWith(holder.firstElementChild);
      mark();
      if (focused) {
        const again = root.querySelector('.node[data-step="' + CSS.escape(focused.dataset.step) + '"]');
        if (again) again.focus();
      }
      if (selected) {
        try {
          panel.innerHTML = await fetchText("/tasks/" + id + "/steps/" + encodeURIComponent(selected));
        } catch (e) { /* keep the old panel */ }
      }
    }

    // At most a few refreshes a second, however many events arrive.
    function soon() {
      if (pending) return;
      const wait = Math.max(0, 250 - (Date.now() - last));
      pending = setTimeout(async () => {
        pending = null;
        try { await refresh(); } catch (e) { /* the poll below retries */ }
      }, wait);
    }

    root.addEventListener("click", (e) => {
      const node = e.target.closest(".node[data-step]");
      if (node) { openStep(node.dataset.step); return; }
      const instance = e.target.closest("[data-open-step]");
      if (instance) openStep(instance.dataset.openStep);
    });
    root.addEventListener("keydown", (e) => {
      const node = e.target.closest(".node[data-step]");
      if (node && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); openStep(node.dataset.step); }
    });

    const isFinal = () => {
      const live = document.getElementById("task-live");
      return !!live && live.dataset.final === "true";
    };
    // The engine's events say when to re-read; the store says what is true. A finished task
    // (Complete, Cancelled, resolved) changes no more, so its page stops listening.
    let events = null;
    if (window.EventSource && !isFinal()) {
      events = new EventSource("/v1/tasks/" + id + "/events");
      for (const kind of ["step", "task", "lagged"]) events.addEventListener(kind, soon);
    }
    // Events mark steps finishing; a step being claimed or started, or settled by another
    // instance, shows on a re-read, made now and then until the task is final (a task in
    // Error may still be retried, from here or elsewhere).
    setInterval(() => {
      if (isFinal()) {
        if (events) { events.close(); events = null; }
        return;
      }
      if (!document.hidden) soon();
    }, 3000);

    mark();
    return { refresh, openStep };
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (button) { e.preventDefault(); act(button); }
  });

  document.addEventListener("DOMContentLoaded", () => {
    task = taskPage();
    autoRefresh();
    window.taskerDashboard = { loadedAt: Date.now() };
  });
})();
