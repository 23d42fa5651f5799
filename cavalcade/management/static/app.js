// Cavalcade dashboard: a small single-page app over the management API (no build step).
"use strict";

const REFRESH_MS = 3000;
const state = { auth: sessionStorage.getItem("cavalcade.auth"), timer: null, sort: {}, filter: "" };

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({
  "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const enc = encodeURIComponent;
const fmt = (n) => (n === undefined || n === null ? "" : Number(n).toLocaleString("en-US"));
const rate = (d) => (d && typeof d.rate === "number" ? d.rate.toFixed(1) + "/s" : "0.0/s");

class ApiError extends Error {
  constructor(status, body) { super((body && body.reason) || "HTTP " + status); this.status = status; }
}

async function api(path, options = {}) {
  // X-Requested-With: the server then sends no WWW-Authenticate (no browser login prompt)
  const headers = Object.assign({ "Authorization": "Basic " + state.auth,
    "X-Requested-With": "XMLHttpRequest" }, options.headers || {});
  if (options.body !== undefined && typeof options.body !== "string") {
    options.body = JSON.stringify(options.body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch("api/" + path, Object.assign({}, options, { headers }));
  const text = await res.text();
  const body = text ? JSON.parse(text) : null;
  if (res.status === 401 && !options.noLogout) { showLogin("Please log in."); throw new ApiError(401, body); }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

function setStatus(text, bad) {
  const s = $("#status");
  s.textContent = text;
  s.className = bad ? "error" : "";
}

// --------------------------------------------------------------------------- login

function showLogin(message) {
  state.auth = null;
  sessionStorage.removeItem("cavalcade.auth");
  clearInterval(state.timer);
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#page").innerHTML = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.auth = btoa($("#login-user").value + ":" + $("#login-password").value);
  try {
    const me = await api("whoami", { noLogout: true });
    sessionStorage.setItem("cavalcade.auth", state.auth);
    start(me);
  } catch (err) {
    $("#login-error").textContent = err.status === 401 ? "Login failed" : err.message;
  }
});

$("#logout").addEventListener("click", () => showLogin(""));

async function start(me) {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#who-name").textContent = me.name + " (" + (me.tags.join(", ") || "no tags") + ")";
  try { $("#cluster-name").textContent = (await api("cluster-name")).name; } catch (e) { /* */ }
  route();
}

// --------------------------------------------------------------------------- routing

const pages = {};

function route() {
  clearInterval(state.timer);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = parts[0] || "overview";
  const page = pages[name] || pages.overview;
  document.querySelectorAll("nav a").forEach((a) => {
    const p = a.dataset.page;
    a.classList.toggle("active", p === name || (name === "queue" && p === "queues"));
  });
  const render = async () => {
    try {
      await page.refresh(parts.slice(1));
      setStatus("");
      $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      if (err.status !== 401) setStatus(err.message, true);
    }
  };
  page.mount(parts.slice(1));
  render();
  state.timer = setInterval(render, REFRESH_MS);
}
window.addEventListener("hashchange", () => { if (state.auth) route(); });

// --------------------------------------------------------------------------- tables

function table(id, columns, rows, options = {}) {
  const key = state.sort[id] || { col: options.sort, reverse: false };
  if (key.col) {
    const col = columns.find((c) => c.key === key.col);
    const get = col && col.sortValue ? col.sortValue : (r) => r[key.col];
    rows = rows.slice().sort((a, b) => {
      const x = get(a), y = get(b);
      const cmp = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return key.reverse ? -cmp : cmp;
    });
  }
  const head = columns.map((c) => {
    const cls = [c.num ? "num" : "", c.sortable === false ? "" : "sortable",
      key.col === c.key ? "sorted" : "", key.col === c.key && key.reverse ? "reverse" : ""].join(" ");
    return `<th class="${cls}" data-col="${esc(c.key)}">${esc(c.title)}</th>`;
  }).join("");
  const body = rows.length
    ? rows.map((r) => `<tr ${options.rowAttrs ? options.rowAttrs(r) : ""}>` + columns.map((c) =>
      `<td class="${c.num ? "num " : ""}col-${esc(c.key)}">${c.html ? c.html(r) : esc(r[c.key])}</td>`).join("") + "</tr>").join("")
    : `<tr><td colspan="${columns.length}" class="empty">${esc(options.empty || "Nothing here")}</td></tr>`;
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

document.addEventListener("click", (ev) => {
  const th = ev.target.closest("th.sortable");
  if (!th) return;
  const id = th.closest("table").id;
  const cur = state.sort[id] || {};
  state.sort[id] = { col: th.dataset.col, reverse: cur.col === th.dataset.col ? !cur.reverse : false };
  route();
});

// --------------------------------------------------------------------------- charts

const SERIES = [["publish", "Publish", "--c1"], ["deliver_get", "Deliver / get", "--c2"],
  ["ack", "Ack", "--c3"], ["confirm", "Confirm", "--c4"]];

function ratesFromSamples(stats, key) {
  const s = ((stats || {})[key + "_details"] || {}).samples || [];
  const pts = s.slice().reverse();  // oldest first
  const out = [];
  for (let i = 1; i < pts.length; i++) {
    const dt = (pts[i].timestamp - pts[i - 1].timestamp) / 1000;
    out.push({ t: pts[i].timestamp, v: dt > 0 ? Math.max(0, (pts[i].sample - pts[i - 1].sample) / dt) : 0 });
  }
  return out;
}

function chart(stats) {
  const W = 800, H = 200, P = 30;
  const series = SERIES.map(([k, label, color]) => ({ k, label, color, pts: ratesFromSamples(stats, k) }));
  const all = series.flatMap((s) => s.pts);
  if (!all.length) return `<div class="empty">Collecting samples...</div>`;
  const t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
  const vmax = Math.max(1, ...all.map((p) => p.v));
  const x = (t) => P + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - P - 8);
  const y = (v) => H - 20 - (v / vmax) * (H - 40);
  const grid = [0, 0.5, 1].map((f) => `<line x1="${P}" x2="${W - 8}" y1="${y(vmax * f)}" y2="${y(vmax * f)}" stroke="#e3e6ec"/>` +
    `<text x="2" y="${y(vmax * f) + 4}" font-size="11" fill="#6b7385">${(vmax * f).toFixed(vmax < 10 ? 1 : 0)}</text>`).join("");
  const lines = series.map((s) => s.pts.length
    ? `<polyline fill="none" stroke="var(${s.color})" stroke-width="2" points="${s.pts.map((p) => x(p.t).toFixed(1) + "," + y(p.v).toFixed(1)).join(" ")}"/>` : "").join("");
  const mins = Math.round((t1 - t0) / 60000);
  const axis = `<text x="${P}" y="${H - 4}" font-size="11" fill="#6b7385">-${mins} min</text><text x="${W - 40}" y="${H - 4}" font-size="11" fill="#6b7385">now</text>`;
  const legend = series.map((s) => `<span><i style="background:var(${s.color})"></i>${esc(s.label)} <b class="rate-${s.k}">${rate(stats[s.k + "_details"])}</b></span>`).join("");
  return `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="message rates">${grid}${lines}${axis}</svg><div class="legend">${legend}</div>`;
}

// --------------------------------------------------------------------------- overview

pages.overview = {
  mount() {
    $("#page").innerHTML = `
      <div class="tiles" id="tiles"></div>
      <div class="card chart"><h2>Message rates (msg/s, last 10 minutes)</h2><div id="rates-chart"></div></div>
      <div class="grid2">
        <div class="card"><h2>Nodes</h2><div id="nodes"></div></div>
        <div class="card"><h2>Queues with the most messages</h2><div id="top-queues"></div></div>
      </div>
      <div class="card"><h2>Connections</h2><div id="overview-connections"></div></div>`;
  },
  async refresh() {
    const [ov, nodes, queues, conns] = await Promise.all([
      api("overview?msg_rates_age=600&msg_rates_incr=5"),
      api("nodes").catch(() => []),
      api("queues?sort=messages&sort_reverse=true&page=1&page_size=8"),
      api("connections"),
    ]);
    const t = ov.object_totals, q = ov.queue_totals;
    const tile = (id, k, v) => `<div class="tile" id="tile-${id}"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div></div>`;
    $("#tiles").innerHTML = tile("messages", "Messages", fmt(q.messages)) +
      tile("ready", "Ready", fmt(q.messages_ready)) + tile("unacked", "Unacked", fmt(q.messages_unacknowledged)) +
      tile("queues", "Queues", fmt(t.queues)) + tile("connections", "Connections", fmt(t.connections)) +
      tile("channels", "Channels", fmt(t.channels)) + tile("consumers", "Consumers", fmt(t.consumers)) +
      tile("publish-rate", "Publish rate", rate(ov.message_stats.publish_details));
    $("#rates-chart").innerHTML = chart(ov.message_stats);
    $("#nodes").innerHTML = table("nodes-table", [
      { key: "name", title: "Node" },
      { key: "heartbeat_age", title: "Heartbeat age", num: true, html: (n) => esc(n.heartbeat_age.toFixed(1) + " s") },
      { key: "running", title: "State", html: (n) => n.running ? `<span class="pill good">running</span>` : `<span class="pill bad">silent</span>` },
      { key: "sockets_used", title: "Connections", num: true },
      { key: "mem_used", title: "Memory", num: true, html: (n) => esc((n.mem_used / 1048576).toFixed(0) + " MiB") },
      { key: "uptime", title: "Uptime", num: true, html: (n) => esc(Math.round(n.uptime / 1000) + " s") },
    ], nodes, { empty: "Node list needs the monitoring tag" });
    $("#top-queues").innerHTML = table("top-queues-table", [
      { key: "name", title: "Queue", html: (r) => `<a href="#/queue/${enc(r.vhost)}/${enc(r.name)}">${esc(r.name)}</a>` },
      { key: "messages", title: "Messages", num: true, html: (r) => fmt(r.messages) },
      { key: "consumers", title: "Consumers", num: true },
    ], queues.items, { empty: "No queues" });
    $("#overview-connections").innerHTML = connectionsTable(conns.slice(0, 10), false);
  },
};

// --------------------------------------------------------------------------- queues

pages.queues = {
  mount() {
    $("#page").innerHTML = `
      <div class="card"><div class="toolbar"><h2 style="margin:0">Queues</h2>
        <input id="queue-filter" placeholder="Filter by name" value="${esc(state.filter)}"></div>
        <div id="queues"></div></div>
      <div class="card"><h2>Add a queue</h2>
        <form id="add-queue" class="form">
          <label>Virtual host</label><select id="add-queue-vhost"></select>
          <label>Name</label><input id="add-queue-name" required>
          <label>Durable</label><select id="add-queue-durable"><option value="true">yes</option><option value="false">no</option></select>
          <label>Arguments (JSON)</label><input id="add-queue-args" value="{}">
          <div class="full"><button type="submit">Add queue</button> <span id="add-queue-result"></span></div>
        </form></div>`;
    $("#queue-filter").addEventListener("input", (e) => { state.filter = e.target.value; pages.queues.refresh(); });
    fillVhosts("#add-queue-vhost");
    $("#add-queue").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const vhost = $("#add-queue-vhost").value, name = $("#add-queue-name").value;
      try {
        await api(`queues/${enc(vhost)}/${enc(name)}`, { method: "PUT", body: {
          durable: $("#add-queue-durable").value === "true", arguments: JSON.parse($("#add-queue-args").value || "{}") } });
        $("#add-queue-result").innerHTML = `<span class="ok">Queue ${esc(name)} added</span>`;
        pages.queues.refresh();
      } catch (err) { $("#add-queue-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
  },
  async refresh() {
    const all = await api("queues");
    const f = state.filter.toLowerCase();
    const rows = all.filter((q) => !f || q.name.toLowerCase().includes(f));
    const ms = (q, k) => ((q.message_stats || {})[k + "_details"] || {}).rate || 0;
    $("#queues").innerHTML = table("queues-table", [
      { key: "vhost", title: "Vhost" },
      { key: "name", title: "Name", html: (q) => `<a href="#/queue/${enc(q.vhost)}/${enc(q.name)}">${esc(q.name)}</a>` },
      { key: "type", title: "Type" },
      { key: "features", title: "Features", sortable: false, html: (q) => [q.durable ? "D" : "", q.auto_delete ? "AD" : "", q.exclusive ? "Excl" : ""].filter(Boolean).map((x) => `<span class="pill">${x}</span>`).join(" ") },
      { key: "messages_ready", title: "Ready", num: true, html: (q) => fmt(q.messages_ready) },
      { key: "messages_unacknowledged", title: "Unacked", num: true, html: (q) => fmt(q.messages_unacknowledged) },
      { key: "messages", title: "Total", num: true, html: (q) => fmt(q.messages) },
      { key: "consumers", title: "Consumers", num: true },
      { key: "publish_rate", title: "Incoming", num: true, sortValue: (q) => ms(q, "publish"), html: (q) => ms(q, "publish").toFixed(1) + "/s" },
      { key: "deliver_rate", title: "Deliver / get", num: true, sortValue: (q) => ms(q, "deliver_get"), html: (q) => ms(q, "deliver_get").toFixed(1) + "/s" },
      { key: "ack_rate", title: "Ack", num: true, sortValue: (q) => ms(q, "ack"), html: (q) => ms(q, "ack").toFixed(1) + "/s" },
    ], rows, { sort: "name", empty: "No queues", rowAttrs: (q) => `data-queue="${esc(q.name)}" data-vhost="${esc(q.vhost)}"` });
  },
};

async function fillVhosts(sel) {
  try {
    const vhosts = await api("vhosts");
    $(sel).innerHTML = vhosts.map((v) => `<option>${esc(v.name)}</option>`).join("");
  } catch (e) { /* shown by the status line */ }
}

// --------------------------------------------------------------------------- one queue

pages.queue = {
  mount([vhost, name]) {
    const path = `queues/${enc(vhost)}/${enc(name)}`;
    $("#page").innerHTML = `
      <div class="card"><h2>Queue <span id="queue-name">${esc(name)}</span> <small class="pill">${esc(vhost)}</small></h2>
        <div class="tiles" id="queue-tiles"></div><div class="kv" id="queue-info"></div>
        <h3>Consumers</h3><div id="queue-consumers"></div>
        <h3>Bindings</h3><div id="queue-bindings"></div></div>
      <div class="grid2">
        <div class="card"><h2>Publish a message</h2><form id="publish" class="form">
          <label>Routing key</label><input id="publish-key" value="${esc(name)}">
          <label>Exchange</label><input id="publish-exchange" value="" placeholder="(default exchange)">
          <label>Delivery mode</label><select id="publish-mode"><option value="2">2 - persistent</option><option value="1">1 - transient</option></select>
          <label>Headers (JSON)</label><input id="publish-headers" value="{}">
          <label class="full">Payload</label><textarea class="full" id="publish-payload">hello</textarea>
          <div class="full"><button type="submit" id="publish-button">Publish message</button> <span id="publish-result"></span></div>
        </form></div>
        <div class="card"><h2>Get messages</h2><form id="get" class="form">
          <label>Ack mode</label><select id="get-ackmode">
            <option value="ack_requeue_true">Nack message requeue true</option>
            <option value="ack_requeue_false">Automatic ack</option>
            <option value="reject_requeue_true">Reject requeue true</option>
            <option value="reject_requeue_false">Reject requeue false</option></select>
          <label>Encoding</label><select id="get-encoding"><option value="auto">Auto string / base64</option><option value="base64">base64</option></select>
          <label>Messages</label><input id="get-count" type="number" value="1" min="1">
          <div class="full"><button type="submit" id="get-button">Get message(s)</button></div>
          <div class="full messages" id="get-result"></div>
        </form></div>
      </div>
      <div class="card"><h2>Purge or delete</h2>
        <button id="purge-button" class="secondary">Purge messages</button>
        <button id="delete-button" class="danger">Delete queue</button> <span id="danger-result"></span></div>`;
    $("#publish").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const headers = JSON.parse($("#publish-headers").value || "{}");
        const props = { delivery_mode: Number($("#publish-mode").value) };
        if (Object.keys(headers).length) props.headers = headers;
        const ex = $("#publish-exchange").value || "amq.default";
        const r = await api(`exchanges/${enc(vhost)}/${enc(ex)}/publish`, { method: "POST", body: {
          routing_key: $("#publish-key").value, payload: $("#publish-payload").value,
          payload_encoding: "string", properties: props } });
        $("#publish-result").innerHTML = r.routed ? `<span class="ok">Message published.</span>` : `<span class="error">Message published, but not routed.</span>`;
        pages.queue.refresh([vhost, name]);
      } catch (err) { $("#publish-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
    $("#get").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const msgs = await api(path + "/get", { method: "POST", body: { count: Number($("#get-count").value),
          ackmode: $("#get-ackmode").value, encoding: $("#get-encoding").value, truncate: 50000 } });
        $("#get-result").innerHTML = msgs.length ? msgs.map((m, i) => `<div class="message"><b>Message ${i + 1}</b>
          <div class="kv"><div>Exchange</div><div>${esc(m.exchange || "(AMQP default)")}</div><div>Routing key</div><div>${esc(m.routing_key)}</div>
          <div>Redelivered</div><div>${m.redelivered}</div><div>Properties</div><div>${esc(JSON.stringify(m.properties))}</div>
          <div>Payload</div><div>${m.payload_bytes} bytes, ${esc(m.payload_encoding)}</div></div><pre class="payload">${esc(m.payload)}</pre></div>`).join("")
          : `<p class="empty" id="queue-empty">Queue is empty</p>`;
        pages.queue.refresh([vhost, name]);
      } catch (err) { $("#get-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
    $("#purge-button").addEventListener("click", async () => {
      if (!confirmAction("Purge all ready messages of " + name + "?")) return;
      try {
        await api(path + "/contents", { method: "DELETE" });
        $("#danger-result").innerHTML = `<span class="ok">Queue purged.</span>`;
        pages.queue.refresh([vhost, name]);
      } catch (err) { $("#danger-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
    $("#delete-button").addEventListener("click", async () => {
      if (!confirmAction("Delete queue " + name + "?")) return;
      try { await api(path, { method: "DELETE" }); location.hash = "#/queues"; }
      catch (err) { $("#danger-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
  },
  async refresh([vhost, name]) {
    const path = `queues/${enc(vhost)}/${enc(name)}`;
    let q;
    try { q = await api(path); } catch (err) {
      if (err.status === 404) { $("#queue-tiles").innerHTML = `<p class="empty">This queue does not exist (any more).</p>`; return; }
      throw err;
    }
    const bindings = await api(path + "/bindings");
    const tile = (id, k, v) => `<div class="tile" id="qtile-${id}"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div></div>`;
    const ms = q.message_stats || {};
    $("#queue-tiles").innerHTML = tile("ready", "Ready", fmt(q.messages_ready)) +
      tile("unacked", "Unacked", fmt(q.messages_unacknowledged)) + tile("total", "Total", fmt(q.messages)) +
      tile("consumers", "Consumers", fmt(q.consumers)) + tile("bytes", "Bytes", fmt(q.message_bytes)) +
      tile("incoming", "Incoming", rate(ms.publish_details)) + tile("deliver", "Deliver / get", rate(ms.deliver_get_details));
    $("#queue-info").innerHTML = [["Type", q.type], ["Durable", q.durable], ["Auto delete", q.auto_delete],
      ["Exclusive", q.exclusive], ["Arguments", JSON.stringify(q.arguments)], ["Policy", q.policy || ""],
      ["Node", q.node]].map(([k, v]) => `<div>${esc(k)}</div><div>${esc(v)}</div>`).join("");
    $("#queue-consumers").innerHTML = table("queue-consumers-table", [
      { key: "consumer_tag", title: "Tag" },
      { key: "channel", title: "Channel", html: (c) => esc((c.channel_details || {}).name || "") },
      { key: "ack_required", title: "Ack required" },
      { key: "prefetch_count", title: "Prefetch", num: true },
    ], q.consumer_details || [], { empty: "No consumers" });
    $("#queue-bindings").innerHTML = bindingsTable("queue-bindings-table", bindings);
  },
};

function confirmAction(text) {
  return window.cavalcadeNoConfirm || window.confirm(text);
}

function bindingsTable(id, rows) {
  return table(id, [
    { key: "source", title: "From", html: (b) => esc(b.source || "(AMQP default)") },
    { key: "destination", title: "To", html: (b) => b.destination_type === "queue"
      ? `<a href="#/queue/${enc(b.vhost)}/${enc(b.destination)}">${esc(b.destination)}</a>` : esc(b.destination) },
    { key: "destination_type", title: "Kind" },
    { key: "routing_key", title: "Routing key" },
    { key: "arguments", title: "Arguments", html: (b) => esc(JSON.stringify(b.arguments)) },
  ], rows, { empty: "No bindings" });
}

// --------------------------------------------------------------------------- exchanges

pages.exchanges = {
  mount() {
    $("#page").innerHTML = `<div class="card"><h2>Exchanges</h2><div id="exchanges"></div></div>
      <div class="card"><h2>Bindings</h2><div id="bindings"></div></div>
      <div class="card"><h2>Add a binding</h2><form id="add-binding" class="form">
        <label>Virtual host</label><select id="bind-vhost"></select>
        <label>From exchange</label><input id="bind-source" required>
        <label>To queue</label><input id="bind-queue" required>
        <label>Routing key</label><input id="bind-key">
        <div class="full"><button type="submit">Bind</button> <span id="bind-result"></span></div></form></div>`;
    fillVhosts("#bind-vhost");
    $("#add-binding").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api(`bindings/${enc($("#bind-vhost").value)}/e/${enc($("#bind-source").value)}/q/${enc($("#bind-queue").value)}`,
          { method: "POST", body: { routing_key: $("#bind-key").value, arguments: {} } });
        $("#bind-result").innerHTML = `<span class="ok">Bound.</span>`;
        pages.exchanges.refresh();
      } catch (err) { $("#bind-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
  },
  async refresh() {
    const [exchanges, bindings] = await Promise.all([api("exchanges"), api("bindings")]);
    $("#exchanges").innerHTML = table("exchanges-table", [
      { key: "vhost", title: "Vhost" },
      { key: "name", title: "Name", html: (e) => esc(e.name || "(AMQP default)") },
      { key: "type", title: "Type" },
      { key: "features", title: "Features", sortable: false, html: (e) => [e.durable ? "D" : "", e.auto_delete ? "AD" : "", e.internal ? "I" : ""].filter(Boolean).map((x) => `<span class="pill">${x}</span>`).join(" ") },
      { key: "arguments", title: "Arguments", html: (e) => esc(JSON.stringify(e.arguments)) },
    ], exchanges, { sort: "name" });
    $("#bindings").innerHTML = bindingsTable("bindings-table", bindings.filter((b) => b.source !== ""));
  },
};

// --------------------------------------------------------------------------- connections

function connectionsTable(rows, withClose) {
  const cols = [
    { key: "name", title: "Name" },
    { key: "node", title: "Node" },
    { key: "user", title: "User" },
    { key: "vhost", title: "Vhost" },
    { key: "state", title: "State", html: (c) => `<span class="pill ${c.state === "running" ? "good" : "warn"}">${esc(c.state)}</span>` },
    { key: "channels", title: "Channels", num: true },
    { key: "client", title: "Client", html: (c) => esc(((c.client_properties || {}).product || "") + " " + ((c.client_properties || {}).version || "")) },
  ];
  if (withClose) cols.push({ key: "close", title: "", sortable: false, html: (c) => `<button class="danger close-connection" data-name="${esc(c.name)}">Close</button>` });
  return table(withClose ? "connections-table" : "overview-connections-table", cols, rows, { empty: "No connections",
    rowAttrs: (c) => `data-connection="${esc(c.name)}"` });
}

pages.connections = {
  mount() {
    $("#page").innerHTML = `<div class="card"><h2>Connections</h2><div id="connections"></div><span id="close-result"></span></div>
      <div class="card"><h2>Channels</h2><div id="channels"></div></div>`;
    $("#connections").addEventListener("click", async (ev) => {
      const b = ev.target.closest("button.close-connection");
      if (!b || !confirmAction("Close connection " + b.dataset.name + "?")) return;
      try {
        await api("connections/" + enc(b.dataset.name), { method: "DELETE", headers: { "X-Reason": "Closed from the dashboard" } });
        $("#close-result").innerHTML = `<span class="ok">Asked to close ${esc(b.dataset.name)}.</span>`;
        pages.connections.refresh();
      } catch (err) { $("#close-result").innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
  },
  async refresh() {
    const [conns, chans] = await Promise.all([api("connections"), api("channels")]);
    $("#connections").innerHTML = connectionsTable(conns, true);
    $("#channels").innerHTML = table("channels-table", [
      { key: "name", title: "Channel" },
      { key: "user", title: "User" },
      { key: "confirm", title: "Confirm", html: (c) => (c.confirm ? "C" : "") + (c.transactional ? "T" : "") },
      { key: "prefetch_count", title: "Prefetch", num: true },
      { key: "messages_unacknowledged", title: "Unacked", num: true },
      { key: "consumer_count", title: "Consumers", num: true },
    ], chans, { empty: "No channels" });
  },
};

// --------------------------------------------------------------------------- admin

pages.admin = {
  mount() {
    $("#page").innerHTML = `<div class="grid2">
      <div class="card"><h2>Users</h2><div id="users"></div>
        <h3>Add a user</h3><form id="add-user" class="form">
          <label>Name</label><input id="add-user-name" required>
          <label>Password</label><input id="add-user-password" type="password">
          <label>Tags</label><input id="add-user-tags" placeholder="administrator, monitoring, ...">
          <div class="full"><button type="submit">Add user</button> <span id="add-user-result"></span></div></form></div>
      <div class="card"><h2>Virtual hosts</h2><div id="vhosts"></div>
        <h3>Add a virtual host</h3><form id="add-vhost" class="form">
          <label>Name</label><input id="add-vhost-name" required>
          <label>Description</label><input id="add-vhost-description">
          <div class="full"><button type="submit">Add virtual host</button> <span id="add-vhost-result"></span></div></form></div>
      </div>
      <div class="card"><h2>Permissions</h2><div id="permissions"></div>
        <h3>Set permissions</h3><form id="set-permission" class="form">
          <label>User</label><input id="perm-user" required>
          <label>Virtual host</label><input id="perm-vhost" value="/">
          <label>Configure / write / read</label><span><input id="perm-configure" value=".*" size="8"> <input id="perm-write" value=".*" size="8"> <input id="perm-read" value=".*" size="8"></span>
          <div class="full"><button type="submit">Set permissions</button> <span id="perm-result"></span></div></form></div>
      <div class="card"><h2>Policies</h2><div id="policies"></div>
        <h3>Add or update a policy</h3><form id="set-policy" class="form">
          <label>Virtual host</label><input id="policy-vhost" value="/">
          <label>Name</label><input id="policy-name" required>
          <label>Pattern</label><input id="policy-pattern" value="^">
          <label>Apply to</label><select id="policy-apply"><option>all</option><option>queues</option><option>exchanges</option></select>
          <label>Definition (JSON)</label><input id="policy-definition" value='{"max-length": 1000}'>
          <label>Priority</label><input id="policy-priority" type="number" value="0">
          <div class="full"><button type="submit">Set policy</button> <span id="policy-result"></span></div></form></div>`;
    const submit = (form, result, fn) => $(form).addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try { await fn(); $(result).innerHTML = `<span class="ok">Done.</span>`; pages.admin.refresh(); }
      catch (err) { $(result).innerHTML = `<span class="error">${esc(err.message)}</span>`; }
    });
    submit("#add-user", "#add-user-result", () => api("users/" + enc($("#add-user-name").value), { method: "PUT",
      body: { password: $("#add-user-password").value, tags: $("#add-user-tags").value } }));
    submit("#add-vhost", "#add-vhost-result", () => api("vhosts/" + enc($("#add-vhost-name").value), { method: "PUT",
      body: { description: $("#add-vhost-description").value } }));
    submit("#set-permission", "#perm-result", () => api(`permissions/${enc($("#perm-vhost").value)}/${enc($("#perm-user").value)}`,
      { method: "PUT", body: { configure: $("#perm-configure").value, write: $("#perm-write").value, read: $("#perm-read").value } }));
    submit("#set-policy", "#policy-result", () => api(`policies/${enc($("#policy-vhost").value)}/${enc($("#policy-name").value)}`,
      { method: "PUT", body: { pattern: $("#policy-pattern").value, "apply-to": $("#policy-apply").value,
        definition: JSON.parse($("#policy-definition").value), priority: Number($("#policy-priority").value) } }));
    $("#page").addEventListener("click", async (ev) => {
      const b = ev.target.closest("button[data-delete]");
      if (!b || !confirmAction("Delete " + b.dataset.label + "?")) return;
      try { await api(b.dataset.delete, { method: "DELETE" }); pages.admin.refresh(); }
      catch (err) { setStatus(err.message, true); }
    });
  },
  async refresh() {
    const [users, vhosts, perms, policies] = await Promise.all([
      api("users").catch(() => []), api("vhosts"), api("permissions").catch(() => []), api("policies").catch(() => [])]);
    const del = (path, label) => `<button class="secondary" data-delete="${esc(path)}" data-label="${esc(label)}">Delete</button>`;
    $("#users").innerHTML = table("users-table", [
      { key: "name", title: "Name" },
      { key: "tags", title: "Tags", html: (u) => u.tags.map((t) => `<span class="pill">${esc(t)}</span>`).join(" ") },
      { key: "password_hash", title: "Password", html: (u) => u.password_hash ? "set" : "none" },
      { key: "del", title: "", sortable: false, html: (u) => del("users/" + enc(u.name), "user " + u.name) },
    ], users, { sort: "name" });
    $("#vhosts").innerHTML = table("vhosts-table", [
      { key: "name", title: "Name" },
      { key: "description", title: "Description" },
      { key: "messages", title: "Messages", num: true, html: (v) => fmt(v.messages || 0) },
      { key: "del", title: "", sortable: false, html: (v) => del("vhosts/" + enc(v.name), "vhost " + v.name) },
    ], vhosts, { sort: "name" });
    $("#permissions").innerHTML = table("permissions-table", [
      { key: "user", title: "User" }, { key: "vhost", title: "Vhost" }, { key: "configure", title: "Configure" },
      { key: "write", title: "Write" }, { key: "read", title: "Read" },
      { key: "del", title: "", sortable: false, html: (p) => del(`permissions/${enc(p.vhost)}/${enc(p.user)}`, "permissions of " + p.user) },
    ], perms, { empty: "No permissions" });
    $("#policies").innerHTML = table("policies-table", [
      { key: "vhost", title: "Vhost" }, { key: "name", title: "Name" }, { key: "pattern", title: "Pattern" },
      { key: "apply-to", title: "Apply to" },
      { key: "definition", title: "Definition", html: (p) => esc(JSON.stringify(p.definition)) },
      { key: "priority", title: "Priority", num: true },
      { key: "del", title: "", sortable: false, html: (p) => del(`policies/${enc(p.vhost)}/${enc(p.name)}`, "policy " + p.name) },
    ], policies, { empty: "No policies" });
  },
};

// --------------------------------------------------------------------------- boot

(async () => {
  if (!state.auth) { showLogin(""); return; }
  try { start(await api("whoami", { noLogout: true })); } catch (err) { showLogin(""); }
})();
