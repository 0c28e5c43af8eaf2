// kiq Web UI: theme toggle, live poll, confirmations, select-all, and the live graph.
// Loaded from <head> (no inline script: the pages' CSP forbids it), so the theme is
// applied before the first paint; everything else waits for the DOM.
(function () {
  "use strict";
  var store = {
    get: function (k) { try { return window.localStorage.getItem(k); } catch (e) { return null; } },
    set: function (k, v) { try { window.localStorage.setItem(k, v); } catch (e) { /* private mode */ } }
  };
  var root = document.documentElement;
  var saved = store.get("kiq.theme");
  if (saved === "dark" || saved === "light") { root.setAttribute("data-theme", saved); }

  function isDark() {
    var theme = root.getAttribute("data-theme");
    if (theme) { return theme === "dark"; }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function compact(n) {
    var a = Math.abs(n);
    if (a >= 1e9) { return (n / 1e9).toPrecision(3).replace(/\.?0+$/, "") + "B"; }
    if (a >= 1e6) { return (n / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M"; }
    if (a >= 1e4) { return (n / 1e3).toFixed(1) + "K"; }
    return n.toLocaleString("en-US");
  }

  function niceMax(v) {
    if (v <= 4) { return 4; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= v) { return steps[i] * p; } }
    return 10 * p;
  }

  var SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function liveGraph(box) {
    var svg = box.querySelector("svg");
    var url = box.getAttribute("data-stats-url");
    var select = document.getElementById("poll-interval");
    var pause = document.getElementById("live-pause");
    var status = box.querySelector('[data-live="status"]');
    var samples = [];  // {t, processed, failed} deltas
    var last = null;
    var timer = null;
    var paused = false;
    var MAX = 60;
    var saved = store.get("kiq.poll");
    if (saved && select.querySelector('option[value="' + saved + '"]')) { select.value = saved; }

    function draw() {
      while (svg.firstChild) { svg.removeChild(svg.firstChild); }
      var W = 900, H = 220, left = 56, top = 10, bottom = H - 20, right = 30;
      var peak = 0;
      samples.forEach(function (s) { peak = Math.max(peak, s.processed, s.failed); });
      var maxV = niceMax(peak);
      var leading = Math.round(maxV / Math.pow(10, Math.floor(Math.log10(maxV))));
      var parts = (leading === 2 || leading === 4) ? 4 : 5;
      for (var i = 0; i <= parts; i++) {
        var y = bottom - (bottom - top) * i / parts;
        var v = maxV * i / parts;
        svg.appendChild(el("line", { "class": "grid", x1: left, x2: W - right, y1: y, y2: y }));
        svg.appendChild(el("text", { "class": "axis", x: left - 6, y: y + 4, "text-anchor": "end" },
          v === Math.round(v) ? compact(v) : String(v)));
      }
      ["processed", "failed"].forEach(function (key) {
        var offset = MAX - samples.length;  // the newest sample sits at the right edge
        var pts = samples.map(function (s, i) {
          var x = left + (W - left - right) * (i + offset) / Math.max(MAX - 1, 1);
          var y = bottom - (bottom - top) * s[key] / maxV;
          return x.toFixed(1) + "," + y.toFixed(1);
        });
        svg.appendChild(el("polyline", { "class": "line " + key, points: pts.join(" ") }));
      });
      if (samples.length) {
        var lastSample = samples[samples.length - 1];
        svg.appendChild(el("text", { "class": "axis", x: W - right, y: H - 4, "text-anchor": "end" }, lastSample.t));
      }
    }

    function update(data) {
      var stats = data.sidekiq;
      Object.keys(stats).forEach(function (key) {
        document.querySelectorAll('[data-stat="' + key + '"]').forEach(function (node) {
          node.textContent = compact(stats[key]);
          node.setAttribute("title", stats[key].toLocaleString("en-US"));
        });
      });
      if (last) {
        samples.push({
          t: data.server_utc_time,
          processed: Math.max(stats.processed - last.processed, 0),
          failed: Math.max(stats.failed - last.failed, 0)
        });
        if (samples.length > MAX) { samples.shift(); }
        var s = samples[samples.length - 1];
        box.querySelector('[data-live="processed"]').textContent = s.processed.toLocaleString("en-US");
        box.querySelector('[data-live="failed"]').textContent = s.failed.toLocaleString("en-US");
        draw();
      }
      last = stats;
      status.textContent = "updated " + data.server_utc_time;
    }

    function poll() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(update)
        .catch(function (e) { status.textContent = "cannot reach the server: " + e.message; })
        .then(schedule);
    }

    function schedule() {
      clearTimeout(timer);
      if (!paused) { timer = setTimeout(poll, Number(select.value) * 1000); }
    }

    select.addEventListener("change", function () { store.set("kiq.poll", select.value); schedule(); });
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume" : "Pause";
      if (paused) { clearTimeout(timer); status.textContent = "paused"; } else { poll(); }
    });
    draw();
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) {
      toggle.addEventListener("click", function () {
        var next = isDark() ? "light" : "dark";
        root.setAttribute("data-theme", next);
        store.set("kiq.theme", next);
      });
    }

    var live = document.getElementById("live-poll");
    if (live) {
      var on = store.get("kiq.livepoll") === "on";
      live.setAttribute("aria-pressed", String(on));
      if (on) { setTimeout(function () { window.location.reload(); }, 5000); }
      live.addEventListener("click", function () {
        store.set("kiq.livepoll", on ? "off" : "on");
        window.location.reload();
      });
    }

    document.querySelectorAll("[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });

    document.querySelectorAll("[data-check-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        box.form.querySelectorAll('input[type="checkbox"][name="key"]').forEach(function (c) {
          c.checked = box.checked;
        });
      });
    });

    var graph = document.getElementById("live-graph");
    if (graph) { liveGraph(graph); }
  });
})();
