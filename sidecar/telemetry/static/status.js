// The sidecar's status page: polls -/status.json and draws plain SVG line charts.
// No framework, no build step, nothing loaded from elsewhere (the page's CSP allows only 'self').
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 480;
  const HEIGHT = 200;
  const MARGIN = { top: 10, right: 12, bottom: 24, left: 62 };
  const SERIES_CLASSES = 8;
  const DATA_URL = "-/status.json";

  const state = { paused: false, timer: null, busy: false, refreshS: 5, failing: false, rendered: false };
  const highlightAlert = new URLSearchParams(window.location.search).get("alert");

  // --- small DOM helpers --------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function section(id) {
    const root = document.getElementById(id);
    return {
      root,
      note: root.querySelector("[data-note]"),
      tiles: root.querySelector("[data-tiles]"),
      charts: root.querySelector("[data-charts]"),
      table: root.querySelector("[data-table]"),
      slos: root.querySelector("[data-slos]"),
      notice: root.querySelector("[data-notice]"),
    };
  }

  // replaceChildren() writes a null or undefined child as the text "null": parts that are absent are left out.
  function setChildren(node, ...children) {
    node.replaceChildren(...children.filter((child) => child !== null && child !== undefined && child !== false));
  }

  function setNote(part, text, off) {
    part.note.hidden = !text;
    part.note.textContent = text || "";
    part.note.classList.toggle("off", Boolean(off));
  }

  // --- numbers and units --------------------------------------------------------------------------

  function significant(value, digits = 3) {
    if (value === 0) return "0";
    const abs = Math.abs(value);
    if (abs >= 1e6) return `${+(value / 1e6).toPrecision(digits)}M`;
    if (abs >= 1e4) return `${+(value / 1e3).toPrecision(digits)}k`;
    if (abs >= 100) return value.toFixed(0);
    return String(+value.toPrecision(digits));
  }

  function duration(seconds) {
    if (seconds === 0) return "0";
    if (seconds < 1e-3) return `${significant(seconds * 1e6)} µs`;
    if (seconds < 1) return `${significant(seconds * 1e3)} ms`;
    if (seconds < 120) return `${significant(seconds)} s`;
    if (seconds < 7200) return `${significant(seconds / 60)} min`;
    if (seconds < 172800) return `${significant(seconds / 3600)} h`;
    return `${significant(seconds / 86400)} d`;
  }

  let currency = "USD";
  function money(value) {
    const digits = Math.abs(value) >= 1 || value === 0 ? 2 : 3;
    try {
      return new Intl.NumberFormat(undefined, {
        style: "currency", currency, maximumSignificantDigits: Math.abs(value) >= 1 ? 6 : digits,
      }).format(value);
    } catch (error) {
      return `${significant(value)} ${currency}`;
    }
  }

  // unit -> [long formatter (legend, summaries), short formatter (axis ticks), words for the unit]
  const UNITS = {
    "req/s": [(v) => `${significant(v)} requests/s`, significant, "requests per second"],
    "err/s": [(v) => `${significant(v)} errors/s`, significant, "errors per second"],
    "tok/s": [(v) => `${significant(v)} tokens/s`, significant, "tokens per second"],
    "ev/s": [(v) => `${significant(v)} events/s`, significant, "events per second"],
    "s": [duration, duration, "seconds"],
    "%": [(v) => `${v.toFixed(1)} %`, (v) => `${significant(v)} %`, "percent"],
    "ratio%": [(v) => `${(v * 100).toFixed(2)} %`, (v) => `${significant(v * 100)} %`, "percent"],
    "°C": [(v) => `${v.toFixed(0)} °C`, (v) => `${significant(v)} °C`, "degrees Celsius"],
    "W": [(v) => `${v.toFixed(0)} W`, (v) => `${significant(v)} W`, "watts"],
    "x": [(v) => `${significant(v)}×`, (v) => `${significant(v)}×`, "times the sustainable rate"],
    "money": [money, money, "currency"],
  };

  function formatter(unit) { return UNITS[unit] || [significant, significant, unit]; }

  function clock(unixSeconds, withSeconds) {
    const options = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (withSeconds) options.second = "2-digit";
    return new Date(unixSeconds * 1000).toLocaleTimeString([], options);
  }

  function ago(unixSeconds, now) {
    return `${duration(Math.max(0, now - unixSeconds))} ago`;
  }

  function isoTime(unixSeconds) { return new Date(unixSeconds * 1000).toISOString(); }

  function niceStep(range, count) {
    const raw = range / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const n = raw / magnitude;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * magnitude;
  }

  // --- charts -------------------------------------------------------------------------------------

  // spec: {id, title, unit, unitLabel?, series: [{label, t: [...], values: [...]}], yMin?, yMax?, floor?}
  // `floor`: values below it are drawn at it (the summary and table keep the true values).
  function chart(container, spec, data) {
    const id = `chart-${spec.id}`;
    let figure = document.getElementById(id);
    if (!figure) {
      figure = el("figure", { class: "chart", id, "data-chart": spec.id });
      container.append(figure);
    }
    const [long, short, words] = formatter(spec.unit);
    const end = data.generated_at;
    const start = end - data.window_s;
    const series = spec.series.map((s, index) => {
      const points = [];
      for (let i = 0; i < s.t.length; i += 1) {
        const v = s.values[i];
        if (s.t[i] >= start && s.t[i] <= end + 1) points.push([s.t[i], v === null || v === undefined ? null : v]);
      }
      const known = points.filter((p) => p[1] !== null).map((p) => p[1]);
      return {
        label: s.label, index, points, known,
        latest: known.length ? known[known.length - 1] : null,
        min: known.length ? Math.min(...known) : null,
        max: known.length ? Math.max(...known) : null,
      };
    });
    const floor = spec.floor !== undefined ? spec.floor : -Infinity;
    const all = series.flatMap((s) => s.known).map((v) => Math.max(v, floor));
    let yMin = spec.yMin !== undefined ? spec.yMin : 0;
    let yMax = spec.yMax !== undefined ? spec.yMax : 0;
    if (all.length) {
      yMin = Math.min(yMin, ...all);
      if (spec.yMax === undefined) yMax = Math.max(...all);
      else yMax = Math.max(yMax, ...all);
    }
    if (!(yMax > yMin)) yMax = yMin + (spec.unit === "s" ? 0.1 : 1);
    const step = niceStep(yMax - yMin, 4);
    yMin = Math.floor(yMin / step) * step;
    yMax = Math.ceil(yMax / step - 1e-9) * step;

    const plotW = WIDTH - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const x = (t) => MARGIN.left + ((t - start) / (end - start)) * plotW;
    const y = (v) => MARGIN.top + plotH - ((Math.max(v, floor) - yMin) / (yMax - yMin)) * plotH;
    const fix = (n) => n.toFixed(1);

    const summary = all.length
      ? `${spec.title} over the last 15 minutes. ` + series.filter((s) => s.known.length).map((s) =>
        `${s.label}: latest ${long(s.latest)}, lowest ${long(s.min)}, highest ${long(s.max)}`).join("; ") + "."
      : `${spec.title}: no data in the last 15 minutes.`;

    const root = svg("svg", {
      role: "img", viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      "aria-labelledby": `${id}-title`, "aria-describedby": `${id}-desc`,
      "data-points": series.reduce((n, s) => n + s.known.length, 0),
    });
    root.append(svg("title", { id: `${id}-title` }, `${spec.title} (${words})`));
    root.append(svg("desc", { id: `${id}-desc` }, summary));

    const grid = svg("g", { class: "grid", "aria-hidden": "true" });
    const axis = svg("g", { class: "axis", "aria-hidden": "true" });
    for (let v = yMin; v <= yMax + step / 2; v += step) {
      const py = y(v);
      grid.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: fix(py), y2: fix(py) }));
      axis.append(svg("text", { x: MARGIN.left - 6, y: fix(py + 4), "text-anchor": "end" }, short(Math.abs(v) < step / 1e6 ? 0 : v)));
    }
    const tickEvery = 300;
    for (let t = Math.ceil(start / tickEvery) * tickEvery; t <= end; t += tickEvery) {
      const px = x(t);
      grid.append(svg("line", { x1: fix(px), x2: fix(px), y1: MARGIN.top, y2: MARGIN.top + plotH }));
      axis.append(svg("text", { x: fix(px), y: HEIGHT - 6, "text-anchor": "middle" }, clock(t)));
    }
    axis.append(svg("path", { d: `M${MARGIN.left},${MARGIN.top}V${MARGIN.top + plotH}H${WIDTH - MARGIN.right}` }));
    root.append(grid, axis);

    const lines = svg("g", { class: "series" });
    for (const s of series) {
      const cls = `s${(s.index % SERIES_CLASSES) + 1}`;
      let d = "";
      let pen = false;
      let run = 0;
      for (const [t, v] of s.points) {
        if (v === null) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${fix(x(t))},${fix(y(v))}`;
        pen = true;
        run += 1;
      }
      lines.append(svg("path", { class: `line ${cls}`, d: d || "M0,0", "data-series": s.label, "data-points": run }));
      if (s.known.length) {
        const last = [...s.points].reverse().find((p) => p[1] !== null);
        lines.append(svg("circle", { class: `dot ${cls}`, cx: fix(x(last[0])), cy: fix(y(last[1])), r: 3 }));
      }
    }
    root.append(lines);
    if (!all.length) {
      root.append(svg("text", { class: "empty-text", x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" }, "No data yet"));
    }

    const legend = el("ul", { class: "legend", "aria-hidden": "true" });
    for (const s of series) {
      const swatch = svg("svg", { viewBox: "0 0 28 10", "aria-hidden": "true", focusable: "false" });
      swatch.append(svg("line", { class: `line s${(s.index % SERIES_CLASSES) + 1}`, x1: 1, x2: 27, y1: 5, y2: 5 }));
      legend.append(el("li", {}, swatch, el("span", { text: s.label }),
        el("span", { class: "value", text: s.latest === null ? "–" : long(s.latest) })));
    }

    const table = el("table", { class: "visually-hidden" },
      el("caption", { text: `${spec.title}: latest values over the last 15 minutes` }),
      el("thead", {}, el("tr", {}, ...["Series", "Latest", "Lowest", "Highest", "Readings"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...series.map((s) => el("tr", {},
        el("th", { scope: "row", text: s.label }),
        ...[s.latest, s.min, s.max].map((v) => el("td", { text: v === null ? "no data" : long(v) })),
        el("td", { text: String(s.known.length) })))));

    const caption = el("figcaption", {}, el(`h${spec.level || 3}`, { text: spec.title }), el("span", { class: "unit", text: spec.unitLabel || words }));
    figure.replaceChildren(caption, root, legend, table);
    return figure;
  }

  function tile(label, value, ...extra) {
    return el("div", { class: "tile" }, el("dt", { text: label }), el("dd", {}, value, ...extra));
  }

  function detail(text) { return el("small", { class: "detail", text }); }

  function series(t, values, label) { return { t, values, label }; }

  // --- sections -----------------------------------------------------------------------------------

  function renderHeader(data) {
    const service = data.service;
    document.getElementById("instance").textContent = service.instance;
    document.title = `Sidecar status: ${service.instance}`;
    const badge = document.getElementById("readiness");
    const failing = Object.entries(service.checks).filter(([, reason]) => reason !== "ok");
    badge.className = `badge ${service.ready ? "badge-ok" : "badge-bad"}`;
    badge.textContent = service.ready ? "Ready" : `Not ready: ${failing.map(([name, reason]) => `${name}: ${reason}`).join("; ")}`;
    const line = document.getElementById("service");
    line.replaceChildren(`inference-sidecar ${service.version} in front of `, el("code", { text: service.upstream }),
      `; up since ${clock(service.started_at, true)}.`);
    const updated = document.getElementById("updated");
    updated.textContent = clock(data.generated_at, true);
    updated.setAttribute("datetime", isoTime(data.generated_at));
    document.getElementById("interval").textContent = String(data.refresh_s);
  }

  function renderTraffic(data) {
    const part = section("traffic");
    const requests = data.requests;
    if (!requests.available) {
      setNote(part, requests.note, true);
      part.tiles.replaceChildren();
      part.charts.replaceChildren();
      return;
    }
    setNote(part, requests.note);
    const w = requests.window;
    setChildren(part.tiles,
      tile("Requests, 15 min", significant(w.requests)),
      tile("Mean rate", w.requests_per_s === null ? "–" : `${significant(w.requests_per_s)} requests/s`),
      tile("Server errors", w.error_ratio === null ? "–" : `${(w.error_ratio * 100).toFixed(2)} %`),
      tile("Tokens in / out", `${significant(w.input_tokens)} / ${significant(w.output_tokens)}`),
    );
    const s = requests.series;
    chart(part.charts, { id: "requests", title: "Request rate", unit: "req/s", series: [series(s.t, s.requests_per_s, "All requests")] }, data);
    chart(part.charts, {
      id: "errors", title: "Errors", unit: "err/s",
      series: [series(s.t, s.errors_per_s, "Server errors"), series(s.t, s.rate_limited_per_s, "Rate limited")],
    }, data);
    chart(part.charts, {
      id: "latency", title: "Request latency", unit: "s",
      series: [series(s.t, s.latency_p50_s, "P50"), series(s.t, s.latency_p95_s, "P95"), series(s.t, s.latency_p99_s, "P99")],
    }, data);
    chart(part.charts, {
      id: "ttft", title: "Time to first token", unit: "s",
      series: [series(s.t, s.ttft_p50_s, "P50"), series(s.t, s.ttft_p95_s, "P95")],
    }, data);
    chart(part.charts, {
      id: "tokens", title: "Tokens", unit: "tok/s",
      series: [series(s.t, s.input_tokens_per_s, "Input"), series(s.t, s.output_tokens_per_s, "Output")],
    }, data);
  }

  function renderGpus(data) {
    const part = section("gpus");
    const gpu = data.gpu;
    part.notice.hidden = !gpu.simulated;
    part.notice.textContent = gpu.simulated
      ? "Simulated GPU (gpu.nvml.simulate): these readings come from no hardware. They follow the proxy's load, "
        + "idle while no request is at the model server, and their metrics carry simulated=\"true\"."
      : "";
    if (!gpu.available) {
      setNote(part, gpu.note, true);
      part.table.replaceChildren();
      part.charts.replaceChildren();
      return;
    }
    setNote(part, gpu.note);
    if (!gpu.gpus.length) {
      part.table.replaceChildren();
      part.charts.replaceChildren();
      return;
    }
    const fmt = (v, unit) => (v === null ? "–" : formatter(unit)[0](v));
    const head = ["GPU", "Model", "State", "Utilisation", "Memory used", "Temperature", "Power"];
    const gpuName = (g) => `GPU ${g.gpu}${g.simulated ? " (simulated)" : ""}`;
    part.table.replaceChildren(el("table", { id: "gpu-table" },
      el("caption", { text: "Each GPU's latest reading (5-second averages)" }),
      el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", { scope: "col", class: i > 2 ? "num" : null, text: h })))),
      el("tbody", {}, ...gpu.gpus.map((g) => el("tr", { "data-gpu": g.gpu },
        el("th", { scope: "row", text: `GPU ${g.gpu}` }),
        el("td", {}, g.name, g.simulated ? " " : null, g.simulated ? el("span", { class: "badge badge-simulated", text: "simulated" }) : null,
          el("br"), el("small", { text: g.uuid })),
        el("td", {}, el("span", { class: `badge ${g.state === "ok" ? "badge-ok" : "badge-bad"}`, text: g.state }), g.error ? ` ${g.error}` : null),
        el("td", { class: "num", text: fmt(g.latest.utilization_percent, "%") }),
        el("td", { class: "num", text: g.latest.memory_used_percent === null ? "–"
          : `${fmt(g.latest.memory_used_percent, "%")}${g.memory_total_mib ? ` of ${significant(g.memory_total_mib / 1024)} GiB` : ""}` }),
        el("td", { class: "num", text: fmt(g.latest.temperature_celsius, "°C") }),
        el("td", { class: "num", text: fmt(g.latest.power_watts, "W") }))))));
    const per = (field) => gpu.gpus.map((g) => series(g.series.t, g.series[field], gpuName(g)));
    chart(part.charts, { id: "gpu-util", title: "GPU utilisation", unit: "%", yMax: 100, series: per("utilization_percent") }, data);
    chart(part.charts, { id: "gpu-memory", title: "GPU memory used", unit: "%", yMax: 100, series: per("memory_used_percent") }, data);
    chart(part.charts, { id: "gpu-temperature", title: "GPU temperature", unit: "°C", series: per("temperature_celsius") }, data);
    chart(part.charts, { id: "gpu-power", title: "GPU power", unit: "W", series: per("power_watts") }, data);
  }

  const WINDOW_NAMES = { 300: "5m", 1800: "30m", 3600: "1h", 7200: "2h", 21600: "6h", 86400: "1d", 259200: "3d" };
  const windowName = (seconds) => WINDOW_NAMES[seconds] || duration(Number(seconds));

  function renderSlos(data) {
    const part = section("slos");
    const slo = data.slo;
    if (!slo.available) {
      setNote(part, slo.note, true);
      part.slos.replaceChildren();
      return;
    }
    setNote(part, slo.note);
    const seen = new Set();
    for (const item of slo.slos) {
      const key = item.name.replace(/[^A-Za-z0-9_-]/g, "_");
      seen.add(key);
      let article = document.getElementById(`slo-${key}`);
      if (!article) {
        article = el("article", { class: "slo", id: `slo-${key}`, "aria-labelledby": `slo-${key}-heading` },
          el("h3", { id: `slo-${key}-heading` }), el("dl", { class: "tiles" }), el("div", { class: "table-wrap" }), el("div", { class: "charts" }));
        part.slos.append(article);
      }
      const [heading, tiles, tableWrap, charts] = article.children;
      const period = duration(item.period_s);
      heading.textContent = `${item.name}: ${+(item.objective * 100).toPrecision(6)} % ${item.sli} over ${period}`;
      const budget = item.budget;
      const observed = `${duration(item.covered_s)} of ${period} observed`;
      // A young SLO has counted minutes of a 30-day period: a percentage of the period's budget would
      // extrapolate them to the month. Until enough is counted, the budget is time spent against time allowed.
      const budgetTile = budget.remaining_ratio === null
        ? tile(`Error budget, ${period}`, "Too early for a percentage",
          detail(`${observed}; a percentage from ${duration(item.period_s * budget.min_coverage_ratio)} on`),
          el("progress", { max: 100, value: Math.min(100, item.coverage_ratio * 100), "aria-label": `Share of the ${period} period observed for ${item.name}` }))
        : tile(`Error budget remaining, ${period}`, `${(budget.remaining_ratio * 100).toFixed(1)} %`,
          detail(observed),
          el("progress", { max: 100, value: Math.max(0, Math.min(100, budget.remaining_ratio * 100)), "aria-label": `Error budget remaining for ${item.name}` }));
      setChildren(tiles,
        budgetTile,
        tile("Budget spent so far", budget.spent_s === null ? "–" : duration(budget.spent_s),
          detail(`of failed-request time; ${duration(budget.allowed_so_far_s)} allowed in the ${duration(item.covered_s)} observed, ${duration(budget.allowed_s)} per ${period}`)),
        tile(`Availability, ${duration(item.covered_s)} counted`, item.availability === null ? "no requests" : `${(item.availability * 100).toFixed(3)} %`),
        tile("Bad / total", `${significant(item.bad)} / ${significant(item.total)}`),
      );
      const windows = Object.keys(item.burn_rates).sort((a, b) => Number(a) - Number(b));
      tableWrap.replaceChildren(el("table", {},
        el("caption", { text: `Burn rate of ${item.name} per window (1× spends the budget exactly over the period)` }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Window" }), ...windows.map((w) => el("th", { scope: "col", class: "num", text: windowName(w) })))),
        el("tbody", {}, el("tr", {}, el("th", { scope: "row", text: "Burn rate" }),
          ...windows.map((w) => el("td", { class: "num", text: item.burn_rates[w] === null ? "–" : `${significant(item.burn_rates[w])}×` }))))));
      const s = item.series;
      chart(charts, {
        id: `slo-${key}-budget`, title: `${item.name}: error budget spent`, unit: "s", level: 4,
        unitLabel: `failed-request time; ${duration(budget.allowed_s)} allowed per ${period}`,
        series: [series(s.t, s.budget_spent_s, "Spent"), series(s.t, s.budget_allowed_so_far_s, "Allowed so far")],
      }, data);
      chart(charts, {
        id: `slo-${key}-burn`, title: `${item.name}: burn rate`, unit: "x", level: 4,
        series: [series(s.t, s.burn_rate_300, "5m window"), series(s.t, s.burn_rate_3600, "1h window")],
      }, data);
    }
    for (const article of [...part.slos.children]) {
      if (!seen.has(article.id.replace(/^slo-/, ""))) article.remove();
    }
  }

  function renderAlerts(data) {
    const part = section("alerts");
    const alerts = data.alerts;
    if (!alerts.available) {
      setNote(part, alerts.note, true);
      part.tiles.replaceChildren();
      part.table.replaceChildren();
      return;
    }
    setNote(part, alerts.note);
    const counts = alerts.counts;
    setChildren(part.tiles,
      tile("Firing", String(counts.firing)),
      tile("Pending", String(counts.pending)),
      tile("Resolved (recent)", String(counts.resolved)),
      alerts.rules ? tile("Rules failing to evaluate", `${alerts.rules.failing} of ${alerts.rules.total}`) : null,
    );
    const head = ["Alert", "Severity", "State", "Since", "Value", "Summary"];
    const rows = alerts.alerts.map((a) => {
      const gpu = a.labels.gpu !== undefined ? ` (GPU ${a.labels.gpu})` : "";
      return el("tr", { class: highlightAlert && a.name === highlightAlert ? "highlight" : null, "data-state": a.state },
        el("th", { scope: "row", text: a.name + gpu }),
        el("td", {}, el("span", { class: `badge badge-${a.severity || "none"}`, text: a.severity || "none" })),
        el("td", {}, el("span", { class: `badge badge-${a.state}`, text: a.state })),
        el("td", {}, el("time", { datetime: isoTime(a.since), title: isoTime(a.since), text: ago(a.since, data.generated_at) })),
        el("td", { class: "num", text: a.value === null ? "–" : significant(a.value) }),
        el("td", { text: a.summary }));
    });
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: head.length, text: "No alerts: every rule's condition is clear." })));
    }
    part.table.replaceChildren(el("table", { id: "alerts-table" },
      el("caption", { text: "Pending, firing and recently resolved alerts, firing first" }),
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", class: h === "Value" ? "num" : null, text: h })))),
      el("tbody", {}, ...rows)));
  }

  function renderAudit(data) {
    const part = section("audit");
    const audit = data.audit;
    if (!audit.available) {
      setNote(part, audit.note, true);
      part.tiles.replaceChildren();
      part.charts.replaceChildren();
      return;
    }
    setNote(part, audit.note);
    const latest = audit.latest;
    if (latest) {
      const fill = latest.spool_fill_ratio;
      setChildren(part.tiles,
        tile(`Sink (${audit.sink})`, el("span", { class: `badge ${latest.sink_up ? "badge-ok" : "badge-bad"}`, text: latest.sink_up ? "up" : "down" })),
        tile("Accepted", latest.accepted_per_s === null ? significant(latest.accepted) : `${significant(latest.accepted_per_s)}/s`),
        tile("Spool fill", fill === null ? "–" : `${(fill * 100).toFixed(2)} %`,
          el("progress", { max: 100, value: Math.min(100, (fill ?? 0) * 100), "aria-label": "Audit spool fill" })),
        tile("Waiting for the sink", `${significant(latest.lag_events)} events`),
        tile("Dead letters", significant(latest.dead_letters)),
        tile("Dropped", significant(latest.dropped)),
      );
    }
    const s = audit.series;
    chart(part.charts, { id: "audit-accepted", title: "Audit events accepted", unit: "ev/s", series: [series(s.t, s.accepted_per_s, "Accepted")] }, data);
    chart(part.charts, {
      id: "audit-problems", title: "Audit events lost or refused", unit: "ev/s",
      series: [series(s.t, s.dropped_per_s, "Dropped"), series(s.t, s.dead_letters_per_s, "Dead-lettered")],
    }, data);
    chart(part.charts, { id: "audit-spool", title: "Audit spool fill", unit: "ratio%", series: [series(s.t, s.spool_fill_ratio, "Spool fill")] }, data);
  }

  function renderCost(data) {
    const part = section("cost");
    const cost = data.cost;
    if (!cost.available) {
      setNote(part, cost.note, true);
      part.tiles.replaceChildren();
      part.charts.replaceChildren();
      return;
    }
    setNote(part, cost.note);
    currency = cost.currency;
    const l = cost.latest;
    const idleRule = cost.idle_power === "in_flight"
      ? "idle power while requests run is in their share (gpu.idle_power: in_flight); this is the rest"
      : "idle power and hardware time no request used (gpu.idle_power: unattributed)";
    setChildren(part.tiles,
      tile("Charged to requests, since start", money(l.local_total)),
      l.unattributed_total === null || l.unattributed_total === undefined ? null
        : tile("Idle GPU, not charged, since start", money(l.unattributed_total), detail(idleRule)),
      tile("Cloud equivalent, since start", l.cloud_equivalent_total === null ? "not priced" : money(l.cloud_equivalent_total)),
      tile("Saved, last 24 h", l.savings_24h === null ? "–" : money(l.savings_24h)),
      tile("Hardware paid back in", l.payback_months === null ? "no estimate" : `${significant(l.payback_months)} months`),
      l.hardware_price ? tile("Hardware price", money(l.hardware_price)) : null,
    );
    const s = cost.series;
    chart(part.charts, {
      id: "cost", title: "Cost", unit: "money", unitLabel: `${cost.currency}, summed over the window`,
      series: [series(s.t, s.local_cumulative, "Charged to requests"), series(s.t, s.cloud_equivalent_cumulative, "Cloud equivalent"),
        series(s.t, s.unattributed_cumulative || [], "Idle, not charged")],
    }, data);
  }

  function render(data) {
    renderHeader(data);
    for (const [name, draw] of [["traffic", renderTraffic], ["gpus", renderGpus], ["slos", renderSlos],
      ["alerts", renderAlerts], ["audit", renderAudit], ["cost", renderCost]]) {
      try {
        draw(data);
      } catch (error) {
        setNote(section(name), `This section could not be drawn: ${error.message}`, true);
      }
    }
    document.body.dataset.rendered = String(data.generated_at);
    if (!state.rendered && highlightAlert) {
      // Opened from an alert notification (generatorURL `/?alert=NAME`): show that alert first.
      const row = document.querySelector("#alerts-table tr.highlight");
      if (row) row.scrollIntoView({ block: "center" });
    }
    state.rendered = true;
  }

  // --- polling ------------------------------------------------------------------------------------

  function setConnection(message) {
    const failing = Boolean(message);
    if (failing === state.failing && !failing) return;
    state.failing = failing;
    document.getElementById("connection").textContent = message || "";
  }

  async function poll() {
    if (state.busy) return;
    if (document.hidden && state.rendered) {
      schedule(); // a background tab does not poll; it catches up when shown
      return;
    }
    state.busy = true;
    try {
      const response = await fetch(DATA_URL, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`${DATA_URL} answered ${response.status}`);
      const data = await response.json();
      state.refreshS = data.refresh_s || state.refreshS;
      render(data);
      setConnection(null);
    } catch (error) {
      setConnection(`Cannot reach the sidecar (${error.message}); showing the last data received.`);
    } finally {
      state.busy = false;
      schedule();
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = state.paused ? null : setTimeout(poll, state.refreshS * 1000);
  }

  function start() {
    const pause = document.getElementById("pause");
    pause.addEventListener("click", () => {
      state.paused = !state.paused;
      pause.setAttribute("aria-pressed", String(state.paused));
      schedule();
    });
    document.getElementById("refresh").addEventListener("click", () => poll());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !state.paused) poll();
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
