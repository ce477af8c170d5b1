// The operator page's behaviour (see src/api/page.rs): every two seconds it reads the
// cluster, the pool, its miners and the sessions from the node that served it; it
// streams one session's events (server-sent events) to show live transitions per
// second, and polls instead when the stream fails; it asks for the API key when a call
// answers 401. Plain JavaScript, no framework, nothing from elsewhere; data from the
// API enters the page only as text, never as markup.
"use strict";

(function () {
  const KEY_STORE = "sq-api-key";
  const POLL_MS = 2000;
  const STREAM_RETRY_MS = 30000; // after a stream fails, poll this long before trying again
  const WINDOW_S = 10; // transitions/s is averaged over this many whole seconds
  const HISTORY_S = 120; // seconds drawn in the sparkline
  const SESSIONS_SHOWN = 50;
  const MINERS_SHOWN = 100;
  const STATES = ["queued", "acked", "precommitted", "committed", "completed", "failed", "cancelled"];

  const $ = (id) => document.getElementById(id);

  let key = sessionStorage.getItem(KEY_STORE) || "";
  let needKey = false;

  class AuthError extends Error {}

  // ---- API calls ---------------------------------------------------------------

  async function api(path) {
    const sentKey = key;
    const headers = { Accept: "application/json" };
    if (sentKey) headers.Authorization = "Bearer " + sentKey;
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.status === 401) {
      // An answer to a call made with a key since replaced says nothing of the new one.
      if (sentKey === key) askKey(sentKey ? "the node refused that key" : "");
      throw new AuthError("401");
    }
    if (!r.ok) {
      let message = "";
      try {
        const body = await r.json();
        message = (body.error && body.error.message) || "";
      } catch (_) {
        /* not JSON */
      }
      throw new Error(path + ": " + r.status + (message ? " " + message : ""));
    }
    return r.json();
  }

  // ---- the key -----------------------------------------------------------------

  function askKey(message) {
    needKey = true;
    closeStream();
    $("key-form").hidden = false;
    $("key-error").textContent = message;
    $("key-change").hidden = true;
    setStatus("API key needed", true);
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const given = $("key-input").value.trim();
    if (!given) return;
    key = given;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    $("key-change").hidden = false;
    needKey = false;
    streamSession = null;
    streamFailedAt = 0;
    tick();
  }

  function forgetKey() {
    key = "";
    sessionStorage.removeItem(KEY_STORE);
    $("key-change").hidden = true;
    closeStream();
    tick();
  }

  // ---- rendering helpers -------------------------------------------------------

  function setStatus(text, bad) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!bad);
  }

  function setText(id, value) {
    $(id).textContent = value === null || value === undefined ? "–" : String(value);
  }

  function rate(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    return n >= 100 ? n.toFixed(0) : n.toFixed(1);
  }

  // Makes `tbody` hold one row per item, in order, reusing the row of an id it had.
  // `cellsOf(item)` gives each cell as {text, cls?, state?, href?}.
  function syncRows(tbody, items, idOf, cellsOf) {
    const old = new Map();
    for (const tr of Array.from(tbody.rows)) old.set(tr.dataset.id, tr);
    for (const item of items) {
      const id = String(idOf(item));
      let tr = old.get(id);
      old.delete(id);
      const cells = cellsOf(item);
      if (!tr || tr.cells.length !== cells.length) {
        if (tr) tr.remove();
        tr = document.createElement("tr");
        tr.dataset.id = id;
        for (let i = 0; i < cells.length; i++) tr.appendChild(document.createElement("td"));
      }
      cells.forEach((c, i) => {
        const td = tr.cells[i];
        td.className = c.cls || "";
        if (c.state) td.dataset.state = c.state;
        if (c.href) {
          let a = td.firstElementChild;
          if (!a || a.tagName !== "A") {
            td.textContent = "";
            a = document.createElement("a");
            td.appendChild(a);
          }
          a.href = c.href;
          a.textContent = c.text;
        } else {
          td.textContent = c.text === null || c.text === undefined ? "–" : String(c.text);
        }
      });
      tbody.appendChild(tr);
    }
    for (const tr of old.values()) tr.remove();
  }

  function num(n) {
    return { text: n, cls: n ? "num" : "num zero" };
  }

  // ---- cluster -----------------------------------------------------------------

  function roleOf(m) {
    if (!m.reachable) return "unreachable";
    if (!m.voter) return "learner";
    return m.state || "unknown";
  }

  function renderCluster(c) {
    setText("served-by", c.node);
    setText("leader", c.leader === null || c.leader === undefined ? "none" : "node " + c.leader);
    setText("term", c.term);
    const members = c.members || [];
    setText("member-count", members.length);
    const applied = members.map((m) => m.applied_index).filter((n) => typeof n === "number");
    const top = applied.length ? Math.max.apply(null, applied) : null;
    const leader = members.find((m) => m.id === c.leader);
    setText("leader-applied", leader ? leader.applied_index : null);
    syncRows($("members").tBodies[0], members, (m) => m.id, (m) => {
      const role = roleOf(m);
      const lag = typeof m.applied_index === "number" && top !== null ? top - m.applied_index : null;
      return [
        { text: m.id },
        { text: m.api, href: location.protocol + "//" + m.api + "/" },
        { text: role, cls: "role role-" + role },
        { text: m.term, cls: "num" },
        { text: m.applied_index, cls: "num" },
        lag === null ? { text: "–", cls: "num" } : num(lag),
        { text: m.reachable ? "yes" : "no", cls: m.reachable ? "" : "bad" },
      ];
    });
  }

  // ---- pool and miners ---------------------------------------------------------

  function renderPool(p) {
    const pool = p.pool || {};
    const delta = pool.delta || 0;
    const scaling = $("scaling");
    scaling.textContent = delta > 0 ? "+" + delta : String(delta);
    scaling.className = "big " + (delta > 0 ? "pos" : delta < 0 ? "neg" : "");
    setText(
      "scaling-note",
      delta > 0
        ? "sessions would put " + delta + " more miner" + (delta === 1 ? "" : "s") + " to work"
        : delta < 0
          ? -delta + " pooled miner" + (delta === -1 ? "" : "s") + " idle"
          : "balanced",
    );
    setText("pool-pooled", pool.pooled);
    setText("pool-reserved", pool.reserved);
    setText("pool-draining", pool.draining);
    setText("pool-gone", pool.gone);
    setText("pool-open-slots", pool.open_slots);
    setText("pool-free", pool.free_capacity);
    setText("completed-minute", pool.completed_last_minute);
    const tasks = p.tasks || {};
    for (const td of $("tasks-total").cells) {
      if (td.dataset.state) td.textContent = tasks[td.dataset.state] ?? "–";
    }
  }

  function renderMiners(m) {
    const miners = m.miners || [];
    syncRows($("miners").tBodies[0], miners, (x) => x.id, (x) => [
      { text: x.id },
      { text: x.name },
      { text: x.state, cls: x.state === "gone" ? "bad" : "" },
      { text: x.session_id || "–" },
      { text: x.in_flight + " / " + x.capacity, cls: "num" },
      num(x.revealed),
      num(x.expired),
      num(x.rejections),
      { text: (x.tags || []).join(", ") },
    ]);
    $("miners-more").hidden = !m.next_before;
  }

  // ---- sessions ----------------------------------------------------------------

  let selected = null; // the session the operator clicked, if any

  function renderSessions(s) {
    const sessions = s.sessions || [];
    syncRows($("sessions").tBodies[0], sessions, (x) => x.id, (x) => {
      const counts = x.counts || {};
      return [
        { text: x.id },
        { text: x.state },
        { text: x.redundancy + " / " + x.quorum, cls: "num" },
        { text: (x.reserved_nodes || []).length, cls: "num" },
      ]
        .concat(STATES.map((st) => Object.assign(num(counts[st] || 0), { state: st })))
        .concat([{ text: x.submitted_total, cls: "num" }]);
    });
    for (const tr of $("sessions").tBodies[0].rows) {
      tr.classList.toggle("selected", tr.dataset.id === streamSession);
    }
    $("sessions-more").hidden = !s.next_before;
  }

  function chooseSession(event) {
    const tr = event.target.closest("tr");
    if (!tr || !tr.dataset.id) return;
    selected = tr.dataset.id;
    openStream(selected);
    for (const row of $("sessions").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.id === selected);
    }
  }

  // ---- throughput: the event stream --------------------------------------------

  let stream = null;
  let streamSession = null;
  let streamOpen = false;
  let streamOpenedAt = 0;
  let streamFailedAt = 0;
  const perSecond = new Map(); // whole second -> transitions seen

  function count(n) {
    const s = Math.floor(Date.now() / 1000);
    perSecond.set(s, (perSecond.get(s) || 0) + n);
  }

  function closeStream() {
    if (stream) stream.close();
    stream = null;
    streamOpen = false;
  }

  function openStream(id) {
    closeStream();
    perSecond.clear();
    streamSession = id;
    // A browser's EventSource cannot send headers: the key goes in the query.
    let url = "/v1/sessions/" + encodeURIComponent(id) + "/events";
    if (key) url += "?key=" + encodeURIComponent(key);
    const es = new EventSource(url);
    stream = es;
    es.addEventListener("open", () => {
      if (stream !== es) return;
      streamOpen = true;
      streamOpenedAt = Date.now();
    });
    es.addEventListener("transition", () => count(1));
    es.addEventListener("lagged", (e) => {
      try {
        count(JSON.parse(e.data).missed || 0);
      } catch (_) {
        /* ignore a malformed notice */
      }
    });
    es.addEventListener("error", () => {
      if (stream !== es) return;
      if (es.readyState === EventSource.CLOSED || !streamOpen) {
        // Refused (401, 404) or never connected: poll, and try again later.
        closeStream();
        streamFailedAt = Date.now();
      } else {
        // Dropped: the browser reconnects by itself; a second error before it
        // opens again gives up on the stream.
        streamOpen = false;
      }
    });
  }

  // Streams the clicked session, else the newest open one with unfinished tasks.
  function pickStream(s) {
    const sessions = s.sessions || [];
    let want = selected && sessions.some((x) => x.id === selected) ? selected : null;
    if (!want) {
      const live = (x) => STATES.slice(0, 4).some((st) => (x.counts || {})[st] > 0);
      const pick =
        sessions.find((x) => x.state === "open" && live(x)) ||
        sessions.find((x) => x.state === "open") ||
        sessions[0];
      want = pick ? pick.id : null;
    }
    if (!want) return;
    if (want === streamSession && (stream || Date.now() - streamFailedAt < STREAM_RETRY_MS)) return;
    openStream(want);
  }

  function streamRate() {
    const now = Math.floor(Date.now() / 1000);
    const since = Math.floor(streamOpenedAt / 1000) + 1;
    const from = Math.max(now - WINDOW_S, since);
    let sum = 0;
    for (let t = from; t < now; t++) sum += perSecond.get(t) || 0;
    for (const t of perSecond.keys()) if (t < now - HISTORY_S) perSecond.delete(t);
    return now > from ? sum / (now - from) : null;
  }

  // ---- throughput: polling -----------------------------------------------------

  let previous = null; // {at, applied, finished: Map(session -> finished tasks)}
  let finishedRate = null;

  function polledRates(c, s) {
    const at = Date.now();
    const finished = new Map();
    for (const x of s.sessions || []) {
      const k = x.counts || {};
      finished.set(x.id, (k.completed || 0) + (k.failed || 0) + (k.cancelled || 0));
    }
    const applied = c.applied_index;
    if (previous) {
      const dt = (at - previous.at) / 1000;
      let done = 0;
      for (const [id, n] of finished) {
        if (previous.finished.has(id)) done += Math.max(0, n - previous.finished.get(id));
      }
      finishedRate = dt > 0 ? done / dt : null;
      setText("finished-rate", rate(finishedRate));
      setText("applied-rate", dt > 0 ? rate(Math.max(0, applied - previous.applied) / dt) : null);
    }
    previous = { at, applied, finished };
  }

  // ---- the headline figure and its sparkline -----------------------------------

  const history = [];

  function everySecond() {
    const streaming = stream && streamOpen;
    const value = streaming ? streamRate() : finishedRate;
    setText("throughput-label", streaming ? "transitions/s (event stream)" : "tasks finished/s (polling)");
    setText("throughput", rate(value));
    setText(
      "throughput-source",
      streaming
        ? "events of " + streamSession + ", last " + WINDOW_S + " s"
        : streamSession
          ? "event stream unavailable; polling session counts"
          : "waiting for a session",
    );
    $("throughput").dataset.source = streaming ? "stream" : "polling";
    history.push(value || 0);
    while (history.length > HISTORY_S) history.shift();
    draw();
  }

  function draw() {
    const canvas = $("spark");
    const width = canvas.clientWidth || canvas.width;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(90 * ratio);
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    const max = Math.max(1, ...history);
    const bar = canvas.width / HISTORY_S;
    g.fillStyle = "#2457c5";
    history.forEach((v, i) => {
      const h = (v / max) * (canvas.height - 16 * ratio);
      const x = (HISTORY_S - history.length + i) * bar;
      g.fillRect(x, canvas.height - h, Math.max(1, bar - 1), h);
    });
    g.fillStyle = "#5d6875";
    g.font = 11 * ratio + "px system-ui, sans-serif";
    g.fillText("max " + rate(max) + "/s over the last " + HISTORY_S + " s", 6 * ratio, 12 * ratio);
  }

  // ---- the poll loop -----------------------------------------------------------

  let timer = null;
  let inflight = false;
  let again = false; // asked for while a refresh was under way: another at once

  async function refresh() {
    const [cluster, pool, sessions, miners] = await Promise.all([
      api("/v1/cluster"),
      api("/v1/pool"),
      api("/v1/sessions?limit=" + SESSIONS_SHOWN),
      api("/v1/pool/miners?limit=" + MINERS_SHOWN),
    ]);
    renderCluster(cluster);
    renderPool(pool);
    renderMiners(miners);
    renderSessions(sessions);
    polledRates(cluster, sessions);
    pickStream(sessions);
    setStatus("updated " + new Date().toLocaleTimeString(), false);
    if (key) $("key-change").hidden = false;
  }

  async function tick() {
    clearTimeout(timer);
    if (inflight) {
      again = true;
      return;
    }
    inflight = true;
    try {
      if (!needKey) await refresh();
    } catch (e) {
      if (!(e instanceof AuthError)) setStatus("cannot read the node: " + e.message, true);
    } finally {
      inflight = false;
      timer = setTimeout(tick, again ? 0 : POLL_MS);
      again = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", useKey);
    $("key-change").addEventListener("click", forgetKey);
    $("sessions").tBodies[0].addEventListener("click", chooseSession);
    setInterval(everySecond, 1000);
    tick();
  });
})();
