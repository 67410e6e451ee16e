/* attnrhythm report: renders the data blocks of this page (no network, no libraries).
 *
 * Data: JSON script elements, "ar-index" (summary, histograms) and one "ar-t{i}" per trace,
 * parsed only when that trace is shown.
 * Views: #index (all traces) and #trace-{i}. Per trace: curves (canvas, shared x-axis,
 * drag to zoom), token strip (one delegated mouse handler), attention maps and head picture.
 */
(function () {
  "use strict";

  const T0 = performance.now();
  const INDEX = JSON.parse(document.getElementById("ar-index").textContent);
  const ROLE_KEYS = ["preplan", "anchor", "dominated", "intro"];
  const ROLE_LABEL = { preplan: "preplan", anchor: "anchor", dominated: "dominated anchor", intro: "intro token" };
  const ROLE_COLOR = { preplan: "#2f6fde", anchor: "#f39c12", dominated: "#d0312d", intro: "#8e44ad" };
  const ROLE_BIT = { preplan: 1, anchor: 2, dominated: 4, intro: 8 };
  const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
  const DPR = window.devicePixelRatio || 1;

  // ------------------------------------------------------------------ small helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }
  function fmt(v) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "\u2013";
    if (typeof v !== "number") return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }
  function pct(x) {
    return x === null || x === undefined ? "\u2013" : (100 * x).toFixed(1) + "%";
  }
  function showTok(s) {
    if (s === "") return "\u2205";
    return s.replace(/\n/g, "\u21b5\n");
  }
  function tokLabel(s) {
    return JSON.stringify(s); // quoted, with escapes: spaces and newlines stay visible
  }
  function niceStep(span, target) {
    const raw = span / Math.max(1, target);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  // Width in CSS pixels of text drawn in font (canvases grow to fit their titles instead of clipping).
  const MEASURE = document.createElement("canvas").getContext("2d");
  function textWidth(text, font) {
    MEASURE.font = font;
    return Math.ceil(MEASURE.measureText(text).width);
  }

  // Robust y-limits of a curve: [lo, hi, clipped]. A value more than the whole min-to-98th-
  // percentile range above the 98th percentile is an outlier: the scale ends at the largest value
  // that is not, and outliers are drawn on the top edge and marked, so one spike never flattens
  // the rest of the curve.
  function robustLimits(values) {
    const v = values.filter((x) => x !== null).sort((a, b) => a - b);
    if (!v.length) return null;
    const lo = v[0], max = v[v.length - 1];
    const q98 = v[Math.floor(0.98 * (v.length - 1))];
    const fence = q98 + (q98 - lo);
    if (v.length >= 20 && q98 > lo && max > fence) {
      let hi = lo;
      for (const x of v) if (x <= fence) hi = x;
      return [lo, hi, true];
    }
    return [lo, max, false];
  }

  function setupCanvas(c, w, h) {
    c.width = Math.round(w * DPR);
    c.height = Math.round(h * DPR);
    c.style.width = w + "px";
    c.style.height = h + "px";
    const g = c.getContext("2d");
    g.setTransform(DPR, 0, 0, DPR, 0, 0);
    g.font = FONT;
    return g;
  }

  // Sequential colour scale: white -> sand -> orange -> crimson -> aubergine (256 entries).
  const STOPS = [
    [0, 255, 255, 255], [0.12, 253, 236, 190], [0.38, 247, 168, 92], [0.68, 203, 60, 88], [1, 52, 14, 72],
  ];
  const LUT = (function () {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let k = 0; k < 256; k++) {
      const x = k / 255;
      let j = 1;
      while (j < STOPS.length - 1 && x > STOPS[j][0]) j++;
      const a = STOPS[j - 1], b = STOPS[j];
      const f = (x - a[0]) / (b[0] - a[0]);
      for (let c = 0; c < 3; c++) lut[k * 3 + c] = Math.round(a[c + 1] + (b[c + 1] - a[c + 1]) * f);
    }
    return lut;
  })();
  function lutIndex(x) {
    return Math.max(0, Math.min(255, Math.round(x * 255))) * 3;
  }
  function colour(x) {
    const k = lutIndex(x);
    return "rgb(" + LUT[k] + "," + LUT[k + 1] + "," + LUT[k + 2] + ")";
  }
  function gradientBar(g, x, y, w, h) {
    for (let k = 0; k < w; k++) {
      g.fillStyle = colour(k / (w - 1));
      g.fillRect(x + k, y, 1, h);
    }
    g.strokeStyle = "#c9cdd6";
    g.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1);
  }

  // ------------------------------------------------------------------ tooltip
  const tip = document.getElementById("tip");
  function showTip(html, cx, cy) {
    tip.innerHTML = html;
    tip.hidden = false;
    moveTip(cx, cy);
  }
  function moveTip(cx, cy) {
    const r = tip.getBoundingClientRect();
    let x = cx + 14, y = cy + 14;
    if (x + r.width > window.innerWidth - 4) x = Math.max(4, cx - r.width - 14);
    if (y + r.height > window.innerHeight - 4) y = Math.max(4, cy - r.height - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() {
    tip.hidden = true;
  }

  // ------------------------------------------------------------------ traces (lazy)
  const cache = new Map();
  function getTrace(i) {
    if (!cache.has(i)) {
      const node = document.getElementById("ar-t" + i);
      const tr = JSON.parse(node.textContent);
      const mask = new Uint8Array(tr.n);
      for (const r of ROLE_KEYS) for (const t of tr.roles[r] || []) if (t >= 0 && t < tr.n) mask[t] |= ROLE_BIT[r];
      tr.mask = mask;
      const introFor = {};
      for (const a in tr.intro_of || {}) (introFor[tr.intro_of[a]] = introFor[tr.intro_of[a]] || []).push(+a);
      tr.introFor = introFor;
      if (tr.maps) tr.maps.decoded = decodeMaps(tr.maps);
      cache.set(i, tr);
    }
    return cache.get(i);
  }

  function decodeMaps(m) {
    const out = {};
    for (const name of ["local", "global"]) {
      const bin = atob(m[name]);
      const bytes = new Uint8Array(bin.length);
      for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
      const view = new DataView(bytes.buffer);
      const q = new Uint16Array(bytes.length >> 1);
      for (let k = 0; k < q.length; k++) q[k] = view.getUint16(2 * k, true);
      out[name] = q;
    }
    return out;
  }

  function tokenTip(tr, i) {
    const parts = ["<b>#" + i + "</b> <code>" + esc(tokLabel(tr.tokens[i])) + "</code>"];
    const roles = ROLE_KEYS.filter((r) => tr.mask[i] & ROLE_BIT[r]);
    if (roles.length) {
      parts.push(
        '<div class="roles">' +
          roles.map((r) => '<span style="background:' + ROLE_COLOR[r] + '">' + ROLE_LABEL[r] + "</span>").join("") +
          "</div>"
      );
    }
    if (tr.intro_of && tr.intro_of[i] !== undefined) parts.push("intro token: #" + tr.intro_of[i]);
    if (tr.introFor[i]) parts.push("introduces dominated anchor " + tr.introFor[i].map((a) => "#" + a).join(", "));
    let rows = "";
    for (const s of tr.series) rows += "<tr><td>" + esc(s.short) + '</td><td class="v">' + fmt(s.v[i]) + "</td></tr>";
    if (tr.logprob) rows += '<tr><td>log-prob</td><td class="v">' + fmt(tr.logprob[i]) + "</td></tr>";
    const gam = Object.keys(tr.gamma || {});
    if (gam.length) {
      rows +=
        '<tr><td colspan="2" style="padding-top:3px;color:#aab3c5">credit \u03b3</td></tr>' +
        gam.map((g) => "<tr><td>" + esc(g) + '</td><td class="v">' + fmt(tr.gamma[g][i]) + "</td></tr>").join("");
    }
    parts.push("<table>" + rows + "</table>");
    return parts.join("");
  }

  // ------------------------------------------------------------------ curves
  function Curves(host, tr, hooks) {
    const series = tr.series;
    const n = tr.n;
    const wrap = el("div", "curves");
    const base = el("canvas"), over = el("canvas", "over");
    wrap.append(base, over);
    host.append(wrap);
    const PH = 64, GAP = 10, TOP = 4, L = 136, R = 14, RUGROW = 11, AX = 30;
    const RUG = ROLE_KEYS.length * RUGROW + 6;
    const H = TOP + series.length * (PH + GAP) + RUG + AX;
    let W = 600, x0 = 0, x1 = n, drag = null, ys = [], marked = null;

    const pw = () => W - L - R;
    const xpx = (i) => L + ((i - x0 + 0.5) * pw()) / (x1 - x0);
    const idxAt = (px) => Math.floor(x0 + ((px - L) * (x1 - x0)) / pw());
    const top = (k) => TOP + k * (PH + GAP);

    function draw() {
      W = Math.max(420, Math.floor(wrap.clientWidth));
      const g = setupCanvas(base, W, H);
      setupCanvas(over, W, H);
      ys = [];
      const clips = [];
      const count = x1 - x0;
      const span = tr.maps ? tr.maps.span : null;
      series.forEach((s, k) => {
        const y0 = top(k);
        g.fillStyle = "#fbfbfc";
        g.fillRect(L, y0, pw(), PH);
        if (span && span[1] > x0 && span[0] < x1) {
          const a = Math.max(span[0], x0), b = Math.min(span[1], x1);
          g.fillStyle = "rgba(70, 110, 200, 0.07)";
          g.fillRect(xpx(a) - (0.5 * pw()) / count, y0, ((b - a) * pw()) / count, PH);
        }
        g.strokeStyle = "#dfe2e8";
        g.lineWidth = 1;
        g.strokeRect(L + 0.5, y0 + 0.5, pw() - 1, PH - 1);
        g.fillStyle = s.color;
        g.font = "600 " + FONT;
        g.textAlign = "right";
        g.textBaseline = "middle";
        g.fillText(s.label, L - 8, y0 + PH / 2 - 2);
        g.font = FONT;
        const limits = robustLimits(s.v.slice(x0, x1));
        let lo = limits ? limits[0] : Infinity, hi = limits ? limits[1] : -Infinity;
        const clipped = limits !== null && limits[2];
        if (lo === Infinity) {
          ys.push(null);
          g.fillStyle = "#9aa0ab";
          g.textAlign = "left";
          g.fillText("undefined here", L + 8, y0 + PH / 2);
          return;
        }
        if (hi - lo < 1e-12) {
          hi += 0.5 * (Math.abs(hi) || 1);
          lo -= 0.5 * (Math.abs(lo) || 1);
        }
        const ypx = (v) => y0 + PH - 4 - ((Math.min(v, hi) - lo) / (hi - lo)) * (PH - 8);
        ys.push(ypx);
        g.fillStyle = "#8a909c";
        g.textBaseline = "top";
        g.fillText(fmt(hi) + (clipped ? "+" : ""), L - 8, y0 + 1);
        g.textBaseline = "bottom";
        g.fillText(fmt(lo), L - 8, y0 + PH - 1);
        if (s.thr !== null && s.thr >= lo && s.thr <= hi) {
          g.strokeStyle = "rgba(0,0,0,0.28)";
          g.setLineDash([3, 3]);
          g.beginPath();
          g.moveTo(L, Math.round(ypx(s.thr)) + 0.5);
          g.lineTo(L + pw(), Math.round(ypx(s.thr)) + 0.5);
          g.stroke();
          g.setLineDash([]);
        }
        g.save();
        g.beginPath();
        g.rect(L, y0, pw(), PH);
        g.clip();
        g.strokeStyle = s.color;
        g.lineWidth = 1.15;
        g.beginPath();
        if (count > pw() * 1.5) {
          // More tokens than pixels: one min-max segment per pixel column.
          const cols = Math.ceil(pw());
          const mn = new Float64Array(cols).fill(Infinity), mx = new Float64Array(cols).fill(-Infinity);
          for (let i = x0; i < x1; i++) {
            const v = s.v[i];
            if (v === null) continue;
            const c = Math.min(cols - 1, Math.floor(((i - x0) * pw()) / count));
            if (v < mn[c]) mn[c] = v;
            if (v > mx[c]) mx[c] = v;
          }
          let prev = false;
          for (let c = 0; c < cols; c++) {
            if (mn[c] === Infinity) {
              prev = false;
              continue;
            }
            const x = L + c + 0.5;
            if (prev) g.lineTo(x, ypx(mx[c]));
            else g.moveTo(x, ypx(mx[c]));
            g.lineTo(x, ypx(mn[c]));
            prev = true;
          }
        } else {
          let prev = false;
          for (let i = x0; i < x1; i++) {
            const v = s.v[i];
            if (v === null) {
              prev = false;
              continue;
            }
            if (prev) g.lineTo(xpx(i), ypx(v));
            else g.moveTo(xpx(i), ypx(v));
            prev = true;
          }
        }
        g.stroke();
        const r = count > 600 ? 1.6 : 2.6;
        g.fillStyle = s.peakColor;
        for (const p of s.peaks) {
          if (p < x0 || p >= x1) continue;
          g.beginPath();
          g.arc(xpx(p), ypx(s.v[p]), r, 0, 2 * Math.PI);
          g.fill();
        }
        if (clipped) {
          // values above the scale: a red triangle on the top edge, and a note with the largest
          let above = 0, max = -Infinity;
          g.fillStyle = "#d0312d";
          for (let i = x0; i < x1; i++) {
            const v = s.v[i];
            if (v === null || v <= hi) continue;
            above++;
            max = Math.max(max, v);
            g.beginPath();
            g.moveTo(xpx(i) - 3.5, y0 + 7);
            g.lineTo(xpx(i) + 3.5, y0 + 7);
            g.lineTo(xpx(i), y0 + 1);
            g.fill();
          }
          const note = above + " above the scale (max " + fmt(max) + ")";
          g.font = FONT;
          g.textAlign = "right";
          g.textBaseline = "top";
          g.fillText(note, L + pw() - 4, y0 + 2);
          clips.push(s.label + ": " + above);
        }
        g.restore();
      });
      wrap.dataset.clipped = clips.join("; ");
      // role rug
      const ry = top(series.length);
      const tw = Math.max(1, pw() / count);
      ROLE_KEYS.forEach((role, k) => {
        const y = ry + k * RUGROW;
        g.fillStyle = ROLE_COLOR[role];
        g.textAlign = "right";
        g.textBaseline = "middle";
        g.font = "10px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
        g.fillText(ROLE_LABEL[role], L - 8, y + RUGROW / 2);
        g.font = FONT;
        for (const t of tr.roles[role] || []) {
          if (t < x0 || t >= x1) continue;
          g.fillRect(xpx(t) - tw / 2, y + 1, Math.max(1, tw - (tw > 3 ? 1 : 0)), RUGROW - 2);
        }
      });
      // x axis
      const ay = ry + RUG;
      g.strokeStyle = "#9aa0ab";
      g.fillStyle = "#4b5260";
      g.beginPath();
      g.moveTo(L, ay + 0.5);
      g.lineTo(L + pw(), ay + 0.5);
      g.stroke();
      const step = Math.max(1, niceStep(count, pw() / 90));
      g.textAlign = "center";
      g.textBaseline = "top";
      for (let t = Math.ceil(x0 / step) * step; t < x1; t += step) {
        const x = Math.round(xpx(t)) + 0.5;
        g.beginPath();
        g.moveTo(x, ay);
        g.lineTo(x, ay + 4);
        g.stroke();
        g.fillText(String(t), x, ay + 6);
      }
      g.textAlign = "right";
      g.fillText("response token", L - 8, ay + 6);
      if (marked !== null) mark(marked);
    }

    function clearOver() {
      const g = over.getContext("2d");
      g.setTransform(DPR, 0, 0, DPR, 0, 0);
      g.clearRect(0, 0, W, H);
      return g;
    }
    function mark(i) {
      marked = i;
      const g = clearOver();
      if (i === null || i < x0 || i >= x1) return;
      const x = Math.round(xpx(i)) + 0.5;
      g.strokeStyle = "rgba(20,20,20,0.55)";
      g.lineWidth = 1;
      g.beginPath();
      g.moveTo(x, TOP);
      g.lineTo(x, top(series.length) + RUG);
      g.stroke();
      series.forEach((s, k) => {
        const v = s.v[i];
        if (v === null || !ys[k]) return;
        g.fillStyle = "#fff";
        g.strokeStyle = s.color;
        g.lineWidth = 2;
        g.beginPath();
        g.arc(x, ys[k](v), 3.5, 0, 2 * Math.PI);
        g.fill();
        g.stroke();
      });
    }
    function drawDrag() {
      const g = clearOver();
      const a = Math.max(L, Math.min(drag.a, drag.b)), b = Math.min(L + pw(), Math.max(drag.a, drag.b));
      g.fillStyle = "rgba(47,111,222,0.12)";
      g.fillRect(a, TOP, b - a, top(series.length) + RUG - TOP);
      g.strokeStyle = "rgba(47,111,222,0.6)";
      g.strokeRect(a + 0.5, TOP + 0.5, b - a, top(series.length) + RUG - TOP);
    }
    function localX(e) {
      return e.clientX - over.getBoundingClientRect().left;
    }
    over.addEventListener("mousedown", (e) => {
      const px = localX(e);
      if (px < L || e.button !== 0) return;
      drag = { a: px, b: px };
      e.preventDefault();
    });
    over.addEventListener("mousemove", (e) => {
      const px = localX(e);
      if (drag) {
        drag.b = px;
        drawDrag();
        hideTip();
        return;
      }
      if (px < L || px > L + pw()) {
        mark(null);
        hooks.leave();
        return;
      }
      const i = Math.min(x1 - 1, Math.max(x0, idxAt(px)));
      mark(i);
      hooks.hover(i, e.clientX, e.clientY);
    });
    over.addEventListener("mouseleave", () => {
      if (!drag) {
        mark(null);
        hooks.leave();
      }
    });
    window.addEventListener("mouseup", () => {
      if (!drag) return;
      const a = Math.min(drag.a, drag.b), b = Math.max(drag.a, drag.b);
      drag = null;
      if (b - a > 5) {
        const i0 = Math.max(x0, idxAt(Math.max(L, a))), i1 = Math.min(x1, idxAt(Math.min(L + pw() - 0.01, b)) + 1);
        if (i1 - i0 >= 2) zoom(i0, i1);
        else mark(null);
      } else mark(null);
    });
    over.addEventListener("click", () => {
      if (marked !== null) hooks.pick(marked);
    });
    over.addEventListener("dblclick", () => zoom(0, n));
    function zoom(a, b) {
      x0 = Math.max(0, a);
      x1 = Math.min(n, b);
      if (x1 - x0 < 2) {
        x0 = 0;
        x1 = n;
      }
      hooks.zoomed(x0, x1);
      draw();
    }
    return { draw, mark, zoom, view: () => [x0, x1], canvas: base };
  }

  // ------------------------------------------------------------------ token strip
  function Strip(box, tr, hooks) {
    let spans = null, hl = null, mode = "roles";
    function build() {
      const parts = new Array(tr.n);
      let norm = null;
      if (mode !== "roles") {
        const v = mode.startsWith("gamma:") ? tr.gamma[mode.slice(6)] : tr.series.find((s) => s.key === mode).v;
        let lo = Infinity, hi = -Infinity;
        for (const x of v) if (x !== null) { if (x < lo) lo = x; if (x > hi) hi = x; }
        const d = hi > lo ? hi - lo : 1;
        norm = v.map((x) => (x === null ? null : (x - lo) / d));
      }
      for (let i = 0; i < tr.n; i++) {
        const t = tr.tokens[i];
        let cls = "";
        let style = "";
        if (norm) {
          if (norm[i] !== null) style = ' style="background:' + colour(0.05 + 0.75 * norm[i]) + '"';
        } else {
          const m = tr.mask[i];
          if (m & 1) cls += " p";
          if (m & 4) cls += " d";
          else if (m & 2) cls += " a";
          if (m & 8) cls += " i";
        }
        if (t === "") cls += " e";
        parts[i] = "<span" + (cls ? ' class="' + cls.slice(1) + '"' : "") + style + ">" + esc(showTok(t)) + "</span>";
      }
      box.innerHTML = parts.join("");
      spans = box.children;
      for (let i = 0; i < spans.length; i++) spans[i]._i = i;
      hl = null;
    }
    function highlight(i, reveal) {
      if (hl !== null && spans[hl]) spans[hl].classList.remove("hl");
      hl = i;
      if (i === null) return;
      const sp = spans[i];
      sp.classList.add("hl");
      if (reveal) {
        const top = sp.offsetTop, bottom = top + sp.offsetHeight;
        if (top < box.scrollTop || bottom > box.scrollTop + box.clientHeight) {
          box.scrollTop = Math.max(0, top - box.clientHeight / 2);
        }
      }
    }
    box.addEventListener("mouseover", (e) => {
      const i = e.target._i;
      if (i === undefined) return;
      highlight(i, false);
      hooks.hover(i, e.clientX, e.clientY);
    });
    box.addEventListener("mousemove", (e) => {
      if (e.target._i !== undefined && !tip.hidden) moveTip(e.clientX, e.clientY);
    });
    box.addEventListener("mouseleave", () => {
      highlight(null);
      hooks.leave();
    });
    build();
    return {
      highlight,
      setMode(m) {
        mode = m;
        build();
      },
      count: () => spans.length,
    };
  }

  // ------------------------------------------------------------------ attention maps
  function MapPlot(host, tr, name, scale, hooks) {
    const m = tr.maps;
    const S = m.span[1] - m.span[0];
    const q = m.decoded[name];
    const vmax = m.vmax[name];
    const D = S > 340 ? S : 340;
    const L = 46, T = 22, B = 46, R = 8;
    const W = L + D + R, H = T + D + B;
    const wrap = el("div", "plot");
    const c = el("canvas");
    wrap.append(c);
    host.append(wrap);
    const value = (r, k) => {
      const x = q[(r * (r + 1)) / 2 + k] / 65535;
      return x * x * vmax;
    };
    function shade(x) {
      // x = q / 65535 = sqrt(v / vmax)
      if (scale === "linear") return x * x;
      if (scale === "log") {
        const v = x * x;
        return v <= 0 ? 0 : Math.max(0, (Math.log10(v) + 4) / 4);
      }
      return x;
    }
    function draw() {
      const off = document.createElement("canvas");
      off.width = S;
      off.height = S;
      const og = off.getContext("2d");
      const img = og.createImageData(S, S);
      const px = img.data;
      for (let r = 0; r < S; r++) {
        const rowOff = (r * (r + 1)) / 2;
        for (let k = 0; k < S; k++) {
          const o = (r * S + k) * 4;
          if (k > r) {
            px[o] = px[o + 1] = px[o + 2] = 238;
          } else {
            const j = lutIndex(shade(q[rowOff + k] / 65535));
            px[o] = LUT[j];
            px[o + 1] = LUT[j + 1];
            px[o + 2] = LUT[j + 2];
          }
          px[o + 3] = 255;
        }
      }
      og.putImageData(img, 0, 0);
      const g = setupCanvas(c, W, H);
      g.imageSmoothingEnabled = false;
      g.drawImage(off, L, T, D, D);
      g.strokeStyle = "#c9cdd6";
      g.strokeRect(L - 0.5, T - 0.5, D + 1, D + 1);
      g.fillStyle = "#1d2330";
      g.font = "600 " + FONT;
      g.textAlign = "left";
      g.textBaseline = "alphabetic";
      const heads = name === "local" ? tr.heads.local.length : tr.heads.global.length;
      g.fillText((name === "local" ? "local" : "global") + " heads: mean map of " + heads, L, T - 8);
      g.font = FONT;
      g.fillStyle = "#4b5260";
      const step = Math.max(1, niceStep(S, D / 60));
      g.textAlign = "center";
      g.textBaseline = "top";
      for (let t = Math.ceil(m.span[0] / step) * step; t < m.span[1]; t += step) {
        const x = L + ((t - m.span[0] + 0.5) * D) / S;
        g.fillRect(x, T + D, 1, 4);
        g.fillText(String(t), x, T + D + 5);
      }
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (let t = Math.ceil(m.span[0] / step) * step; t < m.span[1]; t += step) {
        const y = T + ((t - m.span[0] + 0.5) * D) / S;
        g.fillRect(L - 4, y, 4, 1);
        g.fillText(String(t), L - 6, y);
      }
      g.textAlign = "center";
      g.textBaseline = "top";
      g.fillText("key (response token)", L + D / 2, T + D + 20);
      g.save();
      g.translate(11, T + D / 2);
      g.rotate(-Math.PI / 2);
      g.textBaseline = "middle";
      g.fillText("query", 0, 0);
      g.restore();
      // colour legend: scale, lowest shown value, bar, highest value
      const lw = Math.min(150, D / 2);
      const bx = L + D - lw - 44;
      gradientBar(g, bx, T + D + 34, lw, 8);
      g.textBaseline = "middle";
      g.textAlign = "left";
      g.fillText(scale + " scale", L, T + D + 38);
      g.fillText(fmt(vmax), bx + lw + 4, T + D + 38);
      g.textAlign = "right";
      g.fillText(scale === "log" ? "\u2264" + fmt(vmax * 1e-4) : "0", bx - 4, T + D + 38);
    }
    c.addEventListener("mousemove", (e) => {
      const b = c.getBoundingClientRect();
      const x = e.clientX - b.left - L, y = e.clientY - b.top - T;
      if (x < 0 || y < 0 || x >= D || y >= D) {
        hooks.leave();
        return;
      }
      const k = Math.floor((x * S) / D), r = Math.floor((y * S) / D);
      const t = m.span[0] + r, s = m.span[0] + k;
      const v = k > r ? null : value(r, k);
      hooks.hover(
        t,
        e.clientX,
        e.clientY,
        "<b>" + name + " heads</b><br>query #" + t + " <code>" + esc(tokLabel(tr.tokens[t])) + "</code><br>key #" + s +
          " <code>" + esc(tokLabel(tr.tokens[s])) + "</code><br>attention " + (v === null ? "\u2013 (causal mask)" : fmt(v))
      );
    });
    c.addEventListener("mouseleave", () => hooks.leave());
    draw();
    return { canvas: c };
  }

  // ------------------------------------------------------------------ head picture
  // A layers x heads grid on a canvas: title, "L<layer>" row labels, head numbers and an axis
  // caption; paint(g, x0, y0, r, k, key, cell) draws each cell. The caller adds legend and hover;
  // cellAt(event) gives [r, k] under the mouse, or null.
  function headGrid(host, o, paint) {
    const rows = o.layers.length, cols = o.cols;
    const cell = Math.max(o.minCell, Math.min(32, Math.floor(o.span / Math.max(1, cols))));
    const L = 40, T = 22;
    const capW = textWidth(o.caption, FONT);
    const capX = Math.max(L + (cols * cell) / 2, capW / 2 + 2);
    const W = Math.max(L + cols * cell + 10, o.minWidth, L + textWidth(o.title, "600 " + FONT) + 10, capX + capW / 2 + 4);
    const H = T + rows * cell + o.bottom;
    const wrap = el("div", "plot");
    const canvas = el("canvas");
    wrap.append(canvas);
    host.append(wrap);
    const g = setupCanvas(canvas, W, H);
    g.fillStyle = "#1d2330";
    g.font = "600 " + FONT;
    g.textBaseline = "alphabetic";
    g.fillText(o.title, L, T - 8);
    g.font = FONT;
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < cols; k++) paint(g, L + k * cell, T + r * cell, r, k, o.layers[r] + ":" + k, cell);
      g.fillStyle = "#4b5260";
      g.textAlign = "right";
      g.textBaseline = "middle";
      g.fillText("L" + o.layers[r], L - 5, T + r * cell + cell / 2);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let k = 0; k < cols; k += cols > 16 ? 4 : 1) g.fillText(String(k), L + k * cell + cell / 2, T + rows * cell + 2);
    g.fillText(o.caption, capX, T + rows * cell + o.captionGap);
    const cellAt = (e) => {
      const b = canvas.getBoundingClientRect();
      const k = Math.floor((e.clientX - b.left - L) / cell), r = Math.floor((e.clientY - b.top - T) / cell);
      return k < 0 || r < 0 || k >= cols || r >= rows ? null : [r, k];
    };
    return { canvas, g, L, below: T + rows * cell, cellAt };
  }
  function headClasses(local, global) {
    const cls = {};
    for (const [l, k] of local) cls[l + ":" + k] = "local";
    for (const [l, k] of global) cls[l + ":" + k] = "global";
    return cls;
  }

  function HeadPlot(host, tr) {
    const h = tr.heads;
    const cls = headClasses(h.local, h.global);
    const recv = new Set((h.receiver || []).map(([l, k]) => l + ":" + k));
    let lo = Infinity, hi = -Infinity;
    for (const row of h.d) for (const v of row) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const grid = headGrid(
      host,
      {
        layers: h.layers, cols: h.d.length ? h.d[0].length : 0, span: 300, minCell: 12, minWidth: 250,
        bottom: 74, title: "head span d[l,h]", caption: "query head", captionGap: 15,
      },
      (g, x0, y0, r, k, key, cell) => {
        const v = h.d[r][k];
        g.fillStyle = v === null ? "#eee" : colour(0.04 + (0.92 * (v - lo)) / (hi - lo || 1));
        g.fillRect(x0, y0, cell - 1, cell - 1);
        if (cls[key]) {
          g.strokeStyle = cls[key] === "local" ? ROLE_COLOR.preplan : "#0b7a3e";
          g.lineWidth = 2.5;
          g.strokeRect(x0 + 1.5, y0 + 1.5, cell - 4, cell - 4);
        }
        if (recv.has(key)) {
          g.fillStyle = "#111";
          g.beginPath();
          g.arc(x0 + cell / 2 - 0.5, y0 + cell / 2 - 0.5, 2.4, 0, 2 * Math.PI);
          g.fill();
        }
      }
    );
    const { canvas: c, g, L } = grid;
    const ly = grid.below + 36;
    g.textAlign = "left";
    g.textBaseline = "middle";
    g.lineWidth = 2.5;
    g.strokeStyle = ROLE_COLOR.preplan;
    g.strokeRect(L, ly - 5, 10, 10);
    g.fillText("local", L + 14, ly);
    g.strokeStyle = "#0b7a3e";
    g.strokeRect(L + 52, ly - 5, 10, 10);
    g.fillText("global", L + 66, ly);
    if (recv.size) {
      g.fillStyle = "#111";
      g.beginPath();
      g.arc(L + 114, ly, 2.4, 0, 2 * Math.PI);
      g.fill();
      g.fillStyle = "#4b5260";
      g.fillText("receiver", L + 121, ly);
    }
    gradientBar(g, L + 30, ly + 14, 100, 8);
    g.fillStyle = "#4b5260";
    g.textAlign = "right";
    g.fillText(fmt(lo), L + 26, ly + 18);
    g.textAlign = "left";
    g.fillText(fmt(hi) + " tokens", L + 134, ly + 18);
    c.addEventListener("mousemove", (e) => {
      const at = grid.cellAt(e);
      if (!at) {
        hideTip();
        return;
      }
      const [r, k] = at;
      const key = h.layers[r] + ":" + k;
      const tags = [cls[key], recv.has(key) ? "receiver" : null].filter(Boolean).join(", ");
      showTip(
        "layer " + h.layers[r] + " \u00b7 head " + k + "<br>span d = " + fmt(h.d[r][k]) +
        (h.sink ? "<br>sink mass = " + fmt(h.sink[r][k]) + (h.sinks === "exclude" ? " (excluded)" : "") : "") + (tags ? "<br>" + tags : "") +
          stabilityText(h.layers[r], k),
        e.clientX,
        e.clientY
      );
    });
    c.addEventListener("mouseleave", hideTip);
    return { canvas: c };
  }

  // ------------------------------------------------------------------ corpus head stability
  // INDEX.corpus (when present): a corpus head set (attnrhythm heads, or computed from this
  // report's records): classes of the mean span and, per head, the share of traces in which
  // the per-trace rule makes it local / global / receiver.
  function corpusCell(layer, k) {
    const c = INDEX.corpus;
    if (!c) return null;
    const r = c.layers.indexOf(layer);
    if (r < 0 || k >= c.distance[r].length) return null;
    const s = c.stability;
    return {
      d: c.distance[r][k],
      local: s.local[r][k],
      global: s.global[r][k],
      receiver: s.receiver ? s.receiver[r][k] : null,
    };
  }
  function stabilityText(layer, k) {
    const x = corpusCell(layer, k);
    if (!x) return "";
    return (
      "<br>over " + INDEX.corpus.traces + " traces: local in " + pct(x.local) + ", global in " + pct(x.global) +
      (x.receiver === null ? "" : ", receiver in " + pct(x.receiver))
    );
  }
  function StabilityPlot(host, c) {
    const cls = headClasses(c.local, c.global);
    const grid = headGrid(
      host,
      {
        layers: c.layers, cols: c.layers.length ? c.distance[0].length : 0, span: 420, minCell: 14,
        minWidth: 300, bottom: 48, title: "share of traces: local (left half) / global (right half)",
        caption: "query head (outlined: corpus local / global heads)", captionGap: 16,
      },
      (g, x0, y0, r, k, key, cell) => {
        const half = (cell - 1) / 2;
        g.fillStyle = "#f1f3f6";
        g.fillRect(x0, y0, cell - 1, cell - 1);
        g.globalAlpha = Math.max(0, Math.min(1, c.stability.local[r][k] || 0));
        g.fillStyle = ROLE_COLOR.preplan;
        g.fillRect(x0, y0, half, cell - 1);
        g.globalAlpha = Math.max(0, Math.min(1, c.stability.global[r][k] || 0));
        g.fillStyle = "#0b7a3e";
        g.fillRect(x0 + half, y0, half, cell - 1);
        g.globalAlpha = 1;
        if (cls[key]) {
          g.strokeStyle = "#111";
          g.lineWidth = 2;
          g.strokeRect(x0 + 1, y0 + 1, cell - 3, cell - 3);
        }
      }
    );
    const cv = grid.canvas;
    cv.addEventListener("mousemove", (e) => {
      const at = grid.cellAt(e);
      if (!at) {
        hideTip();
        return;
      }
      const [r, k] = at;
      const key = c.layers[r] + ":" + k;
      showTip(
        "layer " + c.layers[r] + " \u00b7 head " + k + "<br>mean span d = " + fmt(c.distance[r][k]) +
          (cls[key] ? "<br>corpus " + cls[key] + " head" : "") + stabilityText(c.layers[r], k),
        e.clientX,
        e.clientY
      );
    });
    cv.addEventListener("mouseleave", hideTip);
    return cv;
  }

  // ------------------------------------------------------------------ histograms
  function Histogram(host, h) {
    const L = 36, R = 8, T = 20, B = 30, H = 150;
    const W = Math.max(280, L + textWidth(h.label, "600 " + FONT) + R);
    const c = el("canvas");
    host.append(c);
    const g = setupCanvas(c, W, H);
    const maxc = Math.max(1, ...h.counts);
    const nb = h.counts.length;
    const bw = (W - L - R) / Math.max(1, nb);
    g.fillStyle = "#1d2330";
    g.font = "600 " + FONT;
    g.textBaseline = "alphabetic";
    g.fillText(h.label, L, T - 7);
    g.font = FONT;
    g.fillStyle = h.color || "#5b7fc7";
    for (let k = 0; k < nb; k++) {
      const bh = ((H - T - B) * h.counts[k]) / maxc;
      g.fillRect(L + k * bw + 0.5, H - B - bh, Math.max(1, bw - 1), bh);
    }
    g.strokeStyle = "#9aa0ab";
    g.beginPath();
    g.moveTo(L, H - B + 0.5);
    g.lineTo(W - R, H - B + 0.5);
    g.stroke();
    g.fillStyle = "#4b5260";
    g.textBaseline = "top";
    g.textAlign = "left";
    g.fillText(fmt(h.edges[0]), L, H - B + 3);
    g.textAlign = "right";
    g.fillText(fmt(h.edges[h.edges.length - 1]), W - R, H - B + 3);
    g.textAlign = "center";
    g.fillText(h.unit, L + (W - L - R) / 2, H - B + 15);
    g.textAlign = "right";
    g.textBaseline = "top";
    g.fillText(String(maxc), L - 4, T);
    g.textBaseline = "bottom";
    g.fillText("0", L - 4, H - B);
    c.addEventListener("mousemove", (e) => {
      const b = c.getBoundingClientRect();
      const k = Math.floor((e.clientX - b.left - L) / bw);
      if (k < 0 || k >= nb) return hideTip();
      showTip(
        esc(h.label) + "<br>[" + fmt(h.edges[k]) + ", " + fmt(h.edges[k + 1]) + "): " + h.counts[k] + " " + esc(h.count_of),
        e.clientX,
        e.clientY
      );
    });
    c.addEventListener("mouseleave", hideTip);
    return c;
  }

  // ------------------------------------------------------------------ index view
  let indexBuilt = false;
  function renderIndex() {
    const root = document.getElementById("index");
    if (indexBuilt) return;
    indexBuilt = true;
    const head = el("section", "card");
    head.append(el("h2", null, INDEX.rows.length + " trace" + (INDEX.rows.length === 1 ? "" : "s")));
    head.append(el("div", "muted small", INDEX.source));
    const wrapT = el("div", "tablewrap");
    const table = el("table", "traces");
    const cols = INDEX.columns;
    const thead = el("thead");
    const trh = el("tr");
    cols.forEach((col, k) => {
      const th = el("th", col.kind === "text" ? "l" : "", col.label);
      th.dataset.k = k;
      th.title = col.help || "";
      trh.append(th);
    });
    thead.append(trh);
    const tbody = el("tbody");
    table.append(thead, tbody);
    wrapT.append(table);
    head.append(wrapT);
    let sortK = 0, asc = true;
    function cell(row, col) {
      const v = row[col.key];
      if (col.key === "i") return '<a href="#trace-' + row.i + '">#' + row.i + "</a>";
      if (col.key === "key") return '<a href="#trace-' + row.i + '" title="' + esc(v) + '">' + esc(v) + "</a>";
      if (col.key === "rolebar") {
        return (
          '<span class="rolebar" title="shares of preplan, anchor, dominated, intro tokens (full bar: 200%)">' +
          ROLE_KEYS.map((r) => '<i style="width:' + (100 * row.frac[r]) / 2 + "%;background:" + ROLE_COLOR[r] + '"></i>').join("") +
          "</span>"
        );
      }
      if (col.key === "correct" && (v === "yes" || v === "no")) {
        return v === "yes" ? '<span class="ok">\u2713 yes</span>' : '<span class="bad">\u2717 no</span>';
      }
      if (col.kind === "pct") return pct(row.frac[col.key]);
      if (col.kind === "num") return fmt(v);
      return v === null || v === undefined ? "\u2013" : esc(v);
    }
    function sortVal(row, col) {
      if (col.kind === "pct") return row.frac[col.key];
      if (col.key === "rolebar") return row.frac.anchor;
      return row[col.key];
    }
    function fill() {
      const col = cols[sortK];
      const rows = INDEX.rows.slice().sort((a, b) => {
        const x = sortVal(a, col), y = sortVal(b, col);
        if (x === y) return a.i - b.i;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (asc ? 1 : -1);
      });
      tbody.innerHTML = rows
        .map((row) => "<tr>" + cols.map((c) => '<td class="' + (c.kind === "text" ? "l " : "") + "c-" + c.key + '">' + cell(row, c) + "</td>").join("") + "</tr>")
        .join("");
      trh.querySelectorAll("th").forEach((th, k) => {
        th.classList.toggle("sorted", k === sortK);
        th.classList.toggle("asc", k === sortK && asc);
      });
    }
    trh.addEventListener("click", (e) => {
      const th = e.target.closest("th");
      if (!th) return;
      const k = +th.dataset.k;
      if (cols[k].key === "rolebar") return;
      asc = k === sortK ? !asc : true;
      sortK = k;
      fill();
    });
    fill();
    const dist = el("section", "card");
    dist.append(el("h3", null, "Distributions across traces"));
    const hs = el("div", "hists");
    for (const h of INDEX.hists) Histogram(hs, h);
    dist.append(hs);
    root.append(head, dist);
    if (INDEX.corpus) {
      const c = INDEX.corpus;
      const card = el("section", "card");
      card.append(el("h3", null, "Head stability over " + c.traces + " traces"));
      card.append(
        el(
          "div",
          "muted small",
          "Corpus classes from the mean span d[l,h] (" + c.origin + "). Corpus local heads are local in " +
            pct(c.keeps_class.local) + " of the traces on average, corpus global heads global in " +
            pct(c.keeps_class.global) + " (per-trace classes: the same quantile rule on each trace's own d)."
        )
      );
      StabilityPlot(card, c);
      root.append(card);
    }
  }

  // ------------------------------------------------------------------ trace view
  let current = null;
  function renderTrace(i) {
    const root = document.getElementById("trace");
    root.innerHTML = "";
    const tr = getTrace(i);
    const nav = el("div", "nav");
    const total = INDEX.rows.length;
    nav.innerHTML =
      (total > 1 ? '<a href="#index">\u2190 all traces</a>' : "") +
      (i > 0 ? '<a href="#trace-' + (i - 1) + '">\u2039 previous</a>' : total > 1 ? '<span class="disabled">\u2039 previous</span>' : "") +
      (i < total - 1 ? '<a href="#trace-' + (i + 1) + '">next \u203a</a>' : total > 1 ? '<span class="disabled">next \u203a</span>' : "") +
      '<span class="muted">trace ' + (i + 1) + " of " + total + "</span>";
    const headCard = el("section", "card");
    headCard.append(nav);
    headCard.append(el("h2", null, "#" + i + "  " + tr.key));
    const meta = el("div", "meta");
    meta.innerHTML = tr.meta.map(([k, v]) => "<span>" + esc(k) + " <b>" + esc(v) + "</b></span>").join("");
    headCard.append(meta);
    if (tr.prompt) {
      const det = el("details", "prompt");
      det.append(el("summary", null, "prompt"));
      det.append(el("pre", null, tr.prompt));
      headCard.append(det);
    }
    root.append(headCard);

    // curves
    const cc = el("section", "card");
    const ctools = el("div", "toolbar");
    ctools.innerHTML =
      '<h3 style="margin:0">Curves over response tokens</h3>' +
      '<span class="muted">dots: peaks (local maxima in the top ' + pct(tr.q) + " of the curve's values, dashed line); " +
      "drag to zoom, double-click to reset, click to find the token</span>";
    const reset = el("button", null, "reset zoom");
    ctools.append(reset);
    let toMap = null;
    if (tr.maps) {
      toMap = el("button", null, "zoom to map window " + tr.maps.span[0] + ":" + tr.maps.span[1]);
      ctools.append(toMap);
    }
    const view = el("span", "muted small");
    ctools.append(view);
    cc.append(ctools);
    root.append(cc);

    // strip
    const sc = el("section", "card");
    const stools = el("div", "toolbar");
    const legend = el("div", "legend");
    const counts = {};
    for (const r of ROLE_KEYS) counts[r] = (tr.roles[r] || []).length;
    legend.innerHTML =
      "<h3 style=\"margin:0\">Response tokens (" + tr.n + ")</h3>" +
      '<span class="key"><span class="sw p"></span>preplan (' + counts.preplan + ")</span>" +
      '<span class="key"><span class="sw a"></span>anchor (' + counts.anchor + ")</span>" +
      '<span class="key"><span class="sw d"></span>dominated anchor (' + counts.dominated + ")</span>" +
      '<span class="key"><span class="sw i"></span>intro token (' + counts.intro + ")</span>";
    stools.append(legend);
    const sel = el("select");
    sel.innerHTML =
      '<option value="roles">colour: roles</option>' +
      tr.series.map((s) => '<option value="' + s.key + '">colour: ' + esc(s.short) + "</option>").join("") +
      Object.keys(tr.gamma || {}).map((g) => '<option value="gamma:' + esc(g) + '">colour: \u03b3 ' + esc(g) + "</option>").join("");
    stools.append(sel);
    sc.append(stools);
    const box = el("div", "strip");
    sc.append(box);
    root.append(sc);

    // maps + heads: one flex row (local map, global map, head picture), the scale select above
    const mc = el("section", "card");
    const mtools = el("div", "toolbar");
    mtools.innerHTML = '<h3 style="margin:0">Attention maps and heads</h3>';
    mc.append(mtools);
    const mrow = el("div", "row");
    root.append(mc);

    let curves = null, strip = null;
    const hover = (t, cx, cy, html) => {
      if (strip) strip.highlight(t, true);
      if (curves) curves.mark(t);
      showTip(html || tokenTip(tr, t), cx, cy);
    };
    const leave = () => {
      hideTip();
      if (strip) strip.highlight(null);
      if (curves) curves.mark(null);
    };
    curves = Curves(cc, tr, {
      hover: (t, cx, cy) => {
        strip.highlight(t, true);
        showTip(tokenTip(tr, t), cx, cy);
      },
      leave: () => {
        hideTip();
        strip.highlight(null);
      },
      pick: (t) => strip.highlight(t, true),
      zoomed: (a, b) => {
        view.textContent = a === 0 && b === tr.n ? "" : "showing tokens " + a + "\u2013" + (b - 1);
      },
    });
    strip = Strip(box, tr, {
      hover: (t, cx, cy) => {
        curves.mark(t);
        showTip(tokenTip(tr, t), cx, cy);
      },
      leave: () => {
        hideTip();
        curves.mark(null);
      },
    });
    sel.addEventListener("change", () => strip.setMode(sel.value));
    reset.addEventListener("click", () => curves.zoom(0, tr.n));
    if (toMap) toMap.addEventListener("click", () => curves.zoom(tr.maps.span[0], tr.maps.span[1]));

    if (tr.maps) {
      mc.append(
        el(
          "div",
          "muted small",
          "Window " + tr.maps.span[0] + ":" + tr.maps.span[1] + " of the response (" + tr.maps.source + "). " +
            "Rows are queries, columns keys: local heads keep to a band along the diagonal (the sawtooth), " +
            "global heads attend to a few anchor tokens (vertical stripes)."
        )
      );
      const scaleSel = el("select");
      scaleSel.innerHTML =
        '<option value="sqrt">colour: sqrt</option><option value="log">colour: log (4 decades)</option>' +
        '<option value="linear">colour: linear</option>';
      mtools.append(scaleSel);
      const slot = el("div");
      slot.style.display = "contents";
      mrow.append(slot);
      const drawMaps = () => {
        slot.innerHTML = "";
        MapPlot(slot, tr, "local", scaleSel.value, { hover, leave });
        MapPlot(slot, tr, "global", scaleSel.value, { hover, leave });
      };
      scaleSel.addEventListener("change", drawMaps);
      drawMaps();
    } else {
      const note = el("div", "note");
      note.innerHTML = tr.maps_note;
      mrow.append(note);
    }
    mc.append(mrow);
    HeadPlot(mrow, tr);
    curves.draw();
    current = { i, curves };
    document.title = "#" + i + " " + tr.key + " \u2014 attnrhythm report";
    window.scrollTo(0, 0);
  }

  // ------------------------------------------------------------------ routing
  function route() {
    const m = /^#trace-(\d+)$/.exec(location.hash);
    const idx = document.getElementById("index"), trc = document.getElementById("trace");
    hideTip();
    if (m && +m[1] < INDEX.rows.length) {
      idx.hidden = true;
      trc.hidden = false;
      if (!current || current.i !== +m[1]) renderTrace(+m[1]);
    } else if (INDEX.rows.length === 1 && location.hash !== "#index") {
      idx.hidden = true;
      trc.hidden = false;
      if (!current) renderTrace(0);
    } else {
      trc.hidden = true;
      idx.hidden = false;
      renderIndex();
      document.title = INDEX.title;
    }
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (current && !document.getElementById("trace").hidden) current.curves.draw();
    }, 120);
  });
  window.addEventListener("hashchange", route);
  route();
  // Timings (ms since navigation start): script done, and the first frame painted after it.
  const ms = performance.now();
  window.__attnrhythm = { firstRenderMs: ms, scriptMs: ms - T0, paintedMs: null };
  requestAnimationFrame(() =>
    requestAnimationFrame(() => {
      const painted = performance.now();
      window.__attnrhythm.paintedMs = painted;
      document.getElementById("rendered").textContent = "rendered in " + Math.round(painted) + " ms";
    })
  );
})();
