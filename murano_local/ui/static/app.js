// The fleet dashboard of murano-local: plain JS over the fleet API (/api:1/service/<pid>/fleet/...),
// the same service layer as `murano-local fleet status` and `rollout ...`. Plots come rendered as SVG
// from /ui/plots/. The page long-polls fleet/changes and redraws what it shows, never reloading.
"use strict";
(function () {
  // Set once per page load: the browser test checks it survives live updates (no reload happened).
  window.dashboardLoadId = Date.now() + "-" + Math.random();
  // Fleet rows drawn at once (?rows=N): a page of 10,000 rows would keep the browser busy.
  const PAGE = Number(new URLSearchParams(location.search).get("rows")) || 500;
  const state = {pid: null, version: -1, tag: "", sort: {key: "serial", dir: 1}, page: 0, busy: false, again: false,
                 last: 0, cost: 0, openRollout: null};
  const view = document.getElementById("view");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  async function api(method, path, body, headers) {
    const init = {method: method, headers: headers || {}};
    if (body !== undefined) {
      if (body instanceof Blob) { init.body = body; } else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    if (!resp.ok) throw new Error(text.trim().split("\n")[0] || resp.statusText);
    return text ? JSON.parse(text) : null;
  }

  const enc = encodeURIComponent;
  const fleetPath = (suffix) => "/api:1/service/" + enc(state.pid) + "/fleet" + suffix;

  function message(text, info) {
    const box = document.getElementById("message");
    box.hidden = !text;
    box.textContent = text || "";
    box.className = "message" + (info ? " info" : "");
  }

  function ago(us) {
    if (!us) return "never";
    const s = Math.max(0, Math.round(Date.now() / 1000 - us / 1e6));
    if (s >= 86400) return Math.floor(s / 86400) + "d ago";
    if (s >= 3600) return Math.floor(s / 3600) + "h ago";
    if (s >= 60) return Math.floor(s / 60) + "m ago";
    return s + "s ago";
  }
  const pct = (part) => (part && part.percent !== null && part.percent !== undefined) ? Math.round(part.percent) + "%" : "-";
  const time = (us) => us ? new Date(us / 1000).toLocaleTimeString() : "-";

  // ---- fleet table ----
  const COLUMNS = [
    ["serial", "Serial", (g) => g.serial, (g) => el("a", {href: "#/gateway/" + enc(g.serial)}, g.serial)],
    ["tags", "Tags", (g) => g.tags.join(","), (g) => g.tags.join(", ") || "-"],
    ["last_seen", "Last seen", (g) => g.last_seen || 0, (g) => ago(g.last_seen)],
    ["gwe", "gwe", (g) => g.gwe_version || "", (g) => g.gwe_version || "-"],
    ["link", "Link", (g) => g.link || "", (g) => g.link ? el("span", {class: g.link === "connected" ? "ok" : "bad"}, g.link) : "-"],
    ["apps", "Apps", (g) => g.apps.map((a) => a.name + a.version).join(),
     (g) => g.apps.length ? g.apps.map((a) => el("div", {class: a.status === "RUNNING" ? "ok" : "bad"},
       a.name + " " + a.version + " " + a.status)) : "-"],
    ["fetch", "Last install", (g) => g.fetch_status ? g.fetch_status.timestamp : 0,
     (g) => g.fetch_status ? el("span", {class: g.fetch_status.status === "installed" ? "ok" : "bad"},
       g.fetch_status.package + " " + g.fetch_status.status) : "-"],
    ["gmq", "gmq queue", (g) => g.gmq && g.gmq.depth !== null ? g.gmq.depth : -1,
     (g) => !g.gmq ? "-" : g.gmq.error ? el("span", {class: "bad"}, "unreachable") : String(g.gmq.depth)],
    ["alarms", "Alarms", (g) => g.gmq ? g.gmq.alarms.length : 0, (g) => g.gmq && g.gmq.alarms.length ?
      el("span", {class: "bad"}, g.gmq.alarms.join(", ")) : "-"],
    ["disk", "Disk", (g) => g.disk ? g.disk.percent : -1, (g) => pct(g.disk)],
    ["memory", "Memory", (g) => g.memory ? g.memory.percent : -1, (g) => pct(g.memory)],
    ["problems", "Problems", (g) => g.problems.length, (g) => g.problems.length ?
      el("span", {class: "bad"}, g.problems.join("; ")) : el("span", {class: "ok"}, "ok")],
  ];

  async function showFleet() {
    const data = await api("GET", fleetPath("/gateways") + (state.tag ? "?tag=" + enc(state.tag) : ""));
    const column = COLUMNS.find((c) => c[0] === state.sort.key) || COLUMNS[0];
    const rows = data.gateways.slice().sort((a, b) => {
      const x = column[2](a), y = column[2](b);
      return (x < y ? -1 : x > y ? 1 : 0) * state.sort.dir || (a.serial < b.serial ? -1 : 1);
    });
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * PAGE, (state.page + 1) * PAGE);
    const turn = (by) => () => { state.page += by; refresh(); };
    const pager = pages < 2 ? null : el("span", {id: "pager"},
      el("button", {id: "page-prev", disabled: state.page === 0, onclick: turn(-1)}, "previous"),
      " rows " + (state.page * PAGE + 1) + "-" + (state.page * PAGE + shown.length) + " ",
      el("button", {id: "page-next", disabled: state.page === pages - 1, onclick: turn(1)}, "next"));
    const filter = el("select", {id: "tag-filter", onchange: (e) => { state.tag = e.target.value; state.page = 0; refresh(); }},
      el("option", {value: ""}, "all tags"),
      Object.entries(data.tags).map(([t, n]) => el("option", {value: t, selected: t === state.tag}, t + " (" + n + ")")));
    const head = el("tr", {}, COLUMNS.map(([key, label]) => el("th", {
      class: "sortable" + (key === state.sort.key ? (state.sort.dir > 0 ? " sorted-up" : " sorted-down") : ""),
      "data-key": key,
      onclick: () => { state.sort = {key: key, dir: state.sort.key === key ? -state.sort.dir : 1}; refresh(); },
    }, label)));
    const body = el("tbody", {}, shown.map((g) => el("tr", {class: g.problems.length ? "problem" : "", "data-serial": g.serial},
      COLUMNS.map((c) => el("td", {"data-key": c[0]}, c[3](g))))));
    view.replaceChildren(
      el("h2", {}, "Fleet"),
      el("div", {class: "toolbar"}, el("label", {for: "tag-filter"}, "Tag"), filter,
        el("span", {class: "muted", id: "fleet-count"}, rows.length + " gateways"), pager),
      el("table", {id: "fleet-table"}, el("thead", {}, head), body));
  }

  // ---- one gateway ----
  function simpleTable(id, header, rows) {
    return el("table", {id: id}, el("thead", {}, el("tr", {}, header.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))
        : el("tr", {}, el("td", {colspan: header.length, class: "muted"}, "none yet"))));
  }

  function svgBox(name, svg) {
    const box = el("div", {class: "plot-box", id: "plot-" + name});
    // The server rendered it from report values with every text escaped (murano_local/ui/svg.py).
    box.innerHTML = svg;
    return box;
  }

  async function showGateway(serial) {
    const [page, plots] = await Promise.all([
      api("GET", fleetPath("/gateways/" + enc(serial))),
      api("GET", "/ui/plots/" + enc(state.pid) + "/" + enc(serial))]);
    const row = page.row;
    const device = page.device || {};
    view.replaceChildren(
      el("h2", {}, "Gateway ", el("span", {id: "gateway-serial"}, row.serial)),
      el("p", {}, "Tags: " + (row.tags.join(", ") || "none") + " · last report " + ago(row.last_seen) +
        " · gwe " + (row.gwe_version || "-") + " · gmq " + (row.gmq_version || "-") +
        (device.hostname ? " · host " + device.hostname : "") +
        (row.problems.length ? " · problems: " + row.problems.join("; ") : "")),
      el("div", {class: "plots"}, ["system", "load", "gmq_depth", "gmq_counters"].map((n) => svgBox(n, plots[n]))),
      el("h3", {}, "Apps (engine_report)"),
      simpleTable("apps-table", ["App", "Version", "Status", "Uptime", "Exit status"],
        page.apps.map((a) => [a.name, a.version || "-", el("span", {class: a.status === "RUNNING" ? "ok" : "bad"}, a.status),
          a.uptime === null ? "-" : a.uptime + " s", a.exitstatus === null ? "-" : String(a.exitstatus)])),
      el("h3", {}, "Installs (fetch_status history)"),
      simpleTable("fetch-table", ["When", "Package", "Status", "Running", "Error"],
        page.fetch_history.map((f) => [time(f.timestamp), f.package || "-",
          el("span", {class: f.status === "installed" ? "ok" : "bad"}, f.status || "-"), f.running_version || "-",
          f.error || ""])),
      el("h3", {}, "Uploads (upload_status history)"),
      simpleTable("upload-status-table", ["When", "Id", "State", "Bytes", "Error"],
        page.upload_history.map((u) => [time(u.timestamp), u.id || "-",
          el("span", {class: u.state === "done" ? "ok" : u.state === "failed" ? "bad" : ""}, u.state || "-"),
          u.size === null ? "-" : u.bytes_done + " / " + u.size, u.error || ""])),
      el("h3", {}, "Uploaded files"),
      simpleTable("uploads-table", ["File", "Bytes", "sha256", "Uploaded"],
        page.uploads.map((u) => [el("a", {href: "/api:1/service/" + enc(state.pid) + "/content/item/" + enc(u.id) +
          "?download=true", class: "upload-link"}, u.id), String(u.size), el("code", {}, u.sha256 || "-"),
          time(u.updated * 1000000)])),
      el("h3", {}, "Network use"),
      el("div", {class: "plots"}, svgBox("usage", plots.usage)));
  }

  // ---- rollouts ----
  function progress(r) {
    const c = r.counts, total = Math.max(r.total, 1);
    const part = (cls, n) => el("span", {class: cls, style: "width:" + (100 * n / total) + "%"});
    return el("div", {class: "progress", title: c.healthy + " healthy, " + (c.requested + c.installed) +
      " in flight, " + c.failed + " failed of " + r.total},
      part("healthy", c.healthy), part("in-flight", c.requested + c.installed), part("failed", c.failed),
      part("skipped", c.skipped + c.cancelled));
  }

  async function act(name, verb) {
    try {
      await api("POST", fleetPath("/rollouts/" + enc(name) + "/" + verb));
      message("");
    } catch (e) { message(e.message); }
    refresh();
  }

  function rolloutForm(tags, content) {
    const field = (label, input) => [el("label", {for: input.id}, label), input];
    const form = el("form", {class: "rollout", id: "rollout-form"},
      field("Name", el("input", {id: "rf-name", required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}"})),
      field("Package", el("select", {id: "rf-package"}, el("option", {value: ""}, "(upload a file below)"),
        content.map((c) => el("option", {value: c.id}, c.id)))),
      field("or upload", el("input", {id: "rf-file", type: "file", accept: ".gz"})),
      field("Tags", el("select", {id: "rf-tags", multiple: true, size: Math.min(Math.max(tags.length, 2), 6)},
        tags.map((t) => el("option", {value: t}, t)))),
      field("Batch size", el("input", {id: "rf-batch", value: "10%", size: 6})),
      field("Max failures", el("input", {id: "rf-failures", value: "1", size: 6})),
      field("Health window (s)", el("input", {id: "rf-window", value: "60", size: 6})),
      el("div", {class: "actions"}, el("button", {type: "submit", id: "rf-start"}, "Start rollout")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = document.getElementById("rf-file").files[0];
      let pkg = document.getElementById("rf-package").value;
      try {
        if (file) {
          pkg = file.name;
          await api("PUT", "/api:1/service/" + enc(state.pid) + "/content/item/" + enc(pkg), file,
            {"Content-Type": "application/gzip"});
        }
        if (!pkg) throw new Error("choose a package or upload one");
        const r = await api("POST", fleetPath("/rollouts"), {
          name: document.getElementById("rf-name").value, package: pkg,
          tags: Array.from(document.getElementById("rf-tags").selectedOptions).map((o) => o.value),
          batch_size: document.getElementById("rf-batch").value,
          max_failures: document.getElementById("rf-failures").value,
          health_window: Number(document.getElementById("rf-window").value)});
        state.openRollout = r.name;
        message("rollout " + r.name + " started: " + r.total + " gateways", true);
      } catch (err) { message(err.message); }
      refresh();
    });
    return form;
  }

  async function showRollouts(first) {
    const rollouts = await api("GET", fleetPath("/rollouts"));
    if (first || !document.getElementById("rollout-form")) {
      const [tags, content] = await Promise.all([api("GET", fleetPath("/tags")),
        api("GET", "/api:1/service/" + enc(state.pid) + "/content/item")]);
      view.replaceChildren(el("h2", {}, "Rollouts"), el("h3", {}, "Start a rollout"),
        rolloutForm(Object.keys(tags), content), el("div", {id: "rollout-list"}));
    }
    const rows = rollouts.slice().reverse().map((r) => el("tr", {"data-rollout": r.name},
      el("td", {}, el("a", {href: "#/rollouts", onclick: () => { state.openRollout = r.name; refresh(); }}, r.name)),
      el("td", {}, el("span", {class: "state state-" + r.state}, r.state)),
      el("td", {}, r.package), el("td", {}, r.tags.join(", ")),
      el("td", {}, progress(r), el("span", {class: "done"}, r.counts.healthy + "/" + r.total + " healthy, batch " +
        r.batch + " of " + r.batches)),
      el("td", {}, r.failures + " (halts at " + r.threshold + ")"),
      el("td", {class: "reason"}, r.reason || ""),
      el("td", {}, r.state === "running" ? el("button", {onclick: () => act(r.name, "pause")}, "Pause") : null,
        r.state === "paused" ? el("button", {onclick: () => act(r.name, "resume")}, "Resume") : null,
        r.state === "running" || r.state === "paused" ?
          el("button", {onclick: () => act(r.name, "abort")}, "Abort") : null)));
    const list = [el("table", {id: "rollout-table"}, el("thead", {}, el("tr", {},
      ["Name", "State", "Package", "Tags", "Progress", "Failures", "Why", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))];
    if (state.openRollout && rollouts.some((r) => r.name === state.openRollout)) {
      const r = await api("GET", fleetPath("/rollouts/" + enc(state.openRollout)));
      list.push(el("h3", {}, "Rollout " + r.name + " by gateway"),
        simpleTable("rollout-targets", ["Gateway", "Batch", "State", "Asked", "Detail"],
          r.targets.map((t) => [el("a", {href: "#/gateway/" + enc(t.serial)}, t.serial), String(t.batch),
            el("span", {class: "state state-" + t.state}, t.state), time(t.requested_us), t.detail])));
    }
    document.getElementById("rollout-list").replaceChildren(...list);
  }

  // ---- routing and live updates ----
  function route() {
    const hash = location.hash.replace(/^#/, "");
    const m = hash.match(/^\/gateway\/(.+)$/);
    if (m) return {name: "gateway", serial: decodeURIComponent(m[1])};
    if (hash === "/rollouts") return {name: "rollouts"};
    return {name: "fleet"};
  }

  async function draw(first) {
    const r = route();
    document.getElementById("nav-fleet").className = r.name === "rollouts" ? "" : "current";
    document.getElementById("nav-rollouts").className = r.name === "rollouts" ? "current" : "";
    if (r.name === "gateway") await showGateway(r.serial);
    else if (r.name === "rollouts") await showRollouts(first);
    else await showFleet();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // At most one redraw at a time, one a second, and no more than a third of the time busy drawing:
  // a fleet of thousands reports all the time.
  async function refresh(first) {
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    try {
      const wait = Math.max(1000, 3 * state.cost) - (Date.now() - state.last);
      if (!first && wait > 0) await new Promise((ok) => setTimeout(ok, wait));
      state.last = Date.now();
      await draw(first);
      state.cost = Date.now() - state.last;
    } catch (e) {
      message(e.message);
    } finally {
      state.busy = false;
      if (!window.dashboardReadyMs) window.dashboardReadyMs = performance.now();  // first draw, for the bench
      document.body.dataset.ready = "1";
    }
    if (state.again) { state.again = false; refresh(); }
  }

  async function watch() {
    for (;;) {
      try {
        const r = await api("GET", fleetPath("/changes?since=" + state.version + "&timeout=25"));
        if (r.version !== state.version) {
          const known = state.version !== -1;
          state.version = r.version;
          if (known) refresh();
        }
      } catch (e) {
        await new Promise((ok) => setTimeout(ok, 2000));
      }
    }
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    state.pid = params.get("product") || (await api("GET", "/api:1/info")).default_product;
    document.getElementById("product").textContent = "product " + state.pid;
    window.addEventListener("hashchange", () => { message(""); refresh(true); });
    await refresh(true);
    watch();
  }

  start().catch((e) => message(e.message));
})();
