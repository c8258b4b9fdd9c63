// DISCOVER sink web view: camera list, live view with the task overlay, rate charts.
// Plain browser JavaScript, no libraries, no network access beyond this server.
"use strict";
const discover = (() => {
  const SVG = "http://www.w3.org/2000/svg";

  function hue(label) {  // a stable colour per label
    let h = 0;
    for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return h % 360;
  }

  async function getJSON(url) {
    const r = await fetch(url, {cache: "no-store"});
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function el(tag, attrs, text) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                     : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // -- camera list ------------------------------------------------------------------------
  async function refreshList() {
    const cams = await getJSON("/api/cameras");
    document.getElementById("empty").hidden = cams.length > 0;
    const grid = document.getElementById("cameras");
    for (const c of cams) {
      let card = document.getElementById("cam-" + c.id);
      if (!card) {
        card = el("div", {id: "cam-" + c.id, class: "card"});
        const a = el("a", {href: "/view/" + encodeURIComponent(c.id)});
        a.append(el("img", {alt: c.id}), el("div", {class: "caption"}));
        card.append(a);
        grid.append(card);
      }
      card.querySelector("img").src =
        "/api/cameras/" + encodeURIComponent(c.id) + "/snapshot.jpg?f=" + c.last_frame;
      card.querySelector(".caption").textContent =
        `${c.id}: ${c.width}x${c.height}, ${c.fps} frames/s, ${c.kbps} kbit/s, ` +
        `tasks ${c.tasks.join(", ")}`;
    }
    const h = await getJSON("/healthz");
    document.getElementById("health").textContent =
      `${h.cameras} camera(s), ${h.frames} frames, up ${Math.round(h.uptime_s)} s`;
  }

  function listPage() {
    const tick = () => refreshList().catch(e => console.warn(e.message));
    tick();
    setInterval(tick, 2000);
  }

  // -- camera page ------------------------------------------------------------------------
  function drawOverlay(svg, ov) {
    svg.setAttribute("viewBox", `0 0 ${ov.width} ${ov.height}`);
    svg.replaceChildren();
    const names = [];
    for (const s of ov.shapes) {
      const col = `hsl(${hue(s.label)}, 90%, 55%)`;
      const text = s.score == null ? s.label : `${s.label} ${s.score.toFixed(2)}`;
      names.push(text);
      const g = el("svg:g", {class: "shape", "data-label": s.label});
      if (s.polygon && s.polygon.length > 2) {
        g.append(el("svg:polygon", {points: s.polygon.map(p => p.join(",")).join(" "),
                                    fill: col, "fill-opacity": "0.3", stroke: col}));
      }
      if (s.box) {
        const [x0, y0, x1, y1] = s.box;
        g.append(el("svg:rect", {x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none",
                                 stroke: col, "stroke-width": 2}));
        g.append(el("svg:text", {x: x0 + 2, y: Math.max(12, y0 - 3), fill: col}, text));
      }
      svg.append(g);
    }
    const labels = document.getElementById("labels");
    labels.replaceChildren(...names.map(n => el("span", {class: "label"}, n)));
  }

  function drawChart(canvas, t, series, unit) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 28;
    ctx.clearRect(0, 0, w, h);
    let max = 1e-9;
    for (const ys of Object.values(series)) for (const y of ys) max = Math.max(max, y);
    ctx.strokeStyle = "#444";
    ctx.fillStyle = "#999";
    ctx.font = "11px sans-serif";
    ctx.strokeRect(pad, 4, w - pad - 4, h - pad);
    ctx.fillText(max.toFixed(max < 10 ? 1 : 0) + " " + unit, 2, 14);
    ctx.fillText(`${t.length} s`, pad, h - 8);
    const n = Math.max(2, t.length);
    for (const [name, ys] of Object.entries(series)) {
      ctx.strokeStyle = `hsl(${hue(name)}, 80%, 60%)`;
      ctx.beginPath();
      ys.forEach((y, i) => {
        const x = pad + (w - pad - 4) * i / (n - 1);
        const yy = 4 + (h - pad) * (1 - y / max);
        if (i === 0) ctx.moveTo(x, yy); else ctx.lineTo(x, yy);
      });
      ctx.stroke();
    }
  }

  function cameraPage() {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    const base = "/api/cameras/" + encodeURIComponent(id);
    document.title = "DISCOVER: " + id;
    document.getElementById("title").textContent = id;
    document.getElementById("live").src = base + "/mjpeg";
    const svg = document.getElementById("overlay");
    let shown = -1;
    async function overlayTick() {
      const ov = await getJSON(base + "/overlay");
      if (ov.frame !== shown) { drawOverlay(svg, ov); shown = ov.frame; }
    }
    async function statsTick() {
      const [st, cams] = await Promise.all([getJSON(base + "/stats"), getJSON("/api/cameras")]);
      drawChart(document.getElementById("kbps"), st.t, st.kbps, "kbit/s");
      drawChart(document.getElementById("fps"), st.t, {"frames/s": st.fps}, "frames/s");
      document.getElementById("legend").replaceChildren(...Object.keys(st.kbps).map(
        k => el("span", {style: `color: hsl(${hue(k)}, 80%, 60%)`}, k)));
      const c = cams.find(x => x.id === id);
      if (c) {
        document.getElementById("info").textContent =
          `frame ${c.last_frame}, ${c.fps} frames/s, ${c.kbps} kbit/s, ` +
          `capture to decoded ${c.latency_ms} ms`;
        const rs = document.getElementById("restream");
        if (c.restream && !rs.firstChild) {
          const url = location.origin + c.restream;
          rs.append(el("a", {href: c.restream}, url),
                    el("br"), "ffplay / VLC: open this URL");
        }
      }
    }
    const guard = f => () => f().catch(e => console.warn(e.message));
    guard(overlayTick)();
    guard(statsTick)();
    setInterval(guard(overlayTick), 150);
    setInterval(guard(statsTick), 1000);
  }

  return {listPage, cameraPage};
})();
