/* neurodash in the browser: keyboard shortcuts, the token inspector, the units grid's rows,
 * link cells and number formats. Element ids match neurodash/app/ids.py. Text goes into the
 * page only as text (textContent, React children), never as HTML. */
(function () {
  "use strict";

  function isTyping(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }

  function follow(id) {
    const link = document.getElementById(id);
    if (link && link.tagName === "A") link.click();
  }

  /* j / → next unit, k / ← previous unit, / jump box, Escape leaves a text box. */
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (isTyping(e.target)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.key === "/") {
      const box = document.getElementById("jump-input");
      if (box) {
        e.preventDefault();
        box.focus();
        box.select();
      }
    } else if (e.key === "j" || e.key === "ArrowRight") {
      follow("unit-next");
    } else if (e.key === "k" || e.key === "ArrowLeft") {
      follow("unit-prev");
    }
  });

  /* Token rows (render.token_row): the server sends each row's tokens and activations as JSON in
   * data-tokens and the spans are built here, as text; the marked token outlined. The colour scale
   * is neurodash/colors.py's, written into the page around the rows (render.with_token_scale, in
   * data-token-scale): the positive and the negative colour, opacity |act| / max_abs, none below
   * min_alpha. A row outside it stays uncoloured. */
  function tokenScale(row) {
    const holder = row.closest("[data-token-scale]");
    if (!holder) return null;
    if (!holder.ndScale) holder.ndScale = JSON.parse(holder.getAttribute("data-token-scale"));
    return holder.ndScale;
  }

  /* As colors.token_background; attention weights (mode "attention") in the attention colour. */
  function tokenColor(scale, act, maxAbs, mode) {
    const alpha = maxAbs > 0 ? Math.min(Math.abs(act) / maxAbs, 1) : 0;
    if (!scale || alpha < scale.min_alpha) return null;
    const rgb = mode === "attention" ? scale.attention : act > 0 ? scale.positive : scale.negative;
    return "rgba(" + rgb + "," + alpha.toFixed(2) + ")";
  }

  /* Newlines and tabs made visible (and kept), empty tokens marked. */
  function tokenDisplay(token) {
    return token ? token.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u2192\t").replace(/\r/g, "\u240d") : "\u2205";
  }

  /* Python's repr of a string, as the server quotes tokens elsewhere (control characters escaped). */
  const REPR_ESCAPES = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  function pyRepr(text) {
    const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
    return quote + text.replace(/[\\\n\r\t\x00-\x1f\x7f-\xa0\xad']/g, function (c) {
      if (c === "'") return quote === "'" ? "\\'" : c;
      return REPR_ESCAPES[c] || "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
    }) + quote;
  }

  /* The hover text: the exact token (quoted, escapes visible) and its activation (or attention). */
  function tokenTitle(token, act, mode, isQuery) {
    if (mode === "attention") return pyRepr(token) + "  attention " + act.toFixed(3) + (isQuery ? "  (query)" : "");
    return pyRepr(token) + "  " + (act >= 0 ? "+" : "") + act.toFixed(3);
  }

  function renderTokens(row) {
    const data = row.getAttribute("data-tokens");
    if (row.ndRendered === data) return;
    row.ndRendered = data;
    const { tokens, acts, max_abs: maxAbs, marked, mode } = JSON.parse(data);
    const scale = tokenScale(row);
    const spans = tokens.map(function (token, i) {
      const span = document.createElement("span");
      span.textContent = tokenDisplay(token);
      span.title = tokenTitle(token, acts[i], mode, i === marked);
      const color = tokenColor(scale, acts[i], maxAbs, mode);
      if (color) span.style.backgroundColor = color;
      if (i === marked) span.className = "nd-tok-max";
      return span;
    });
    row.replaceChildren.apply(row, spans);
  }

  function renderTokensIn(node) {
    if (node.nodeType !== 1) return;
    if (node.matches(".nd-tokens[data-tokens]")) renderTokens(node);
    else node.querySelectorAll(".nd-tokens[data-tokens]").forEach(renderTokens);
  }

  new MutationObserver(function (mutations) {
    for (const m of mutations) {
      if (m.type === "attributes") renderTokens(m.target);
      else if (!m.target.ndRendered) m.addedNodes.forEach(renderTokensIn);  // not our own spans
    }
  }).observe(document.documentElement, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-tokens"] });

  /* The token inspector: the hovered (or clicked) token's exact text and value, instantly. */
  function inspect(e) {
    const token = e.target.closest && e.target.closest(".nd-tokens > span");
    const inspector = document.getElementById("token-inspector");
    if (token && inspector) inspector.textContent = token.title;
  }
  document.addEventListener("mouseover", inspect);
  document.addEventListener("click", inspect);

  /* The hovered token's value at the cursor: one tooltip element that follows the mouse. */
  function tip() {
    let el = document.getElementById("nd-tip");
    if (!el) {
      el = document.createElement("div");
      el.id = "nd-tip";
      el.className = "nd-tip";
      document.body.appendChild(el);
    }
    return el;
  }
  document.addEventListener("mousemove", function (e) {
    const token = e.target.closest && e.target.closest(".nd-tokens > span");
    const el = document.getElementById("nd-tip");
    if (!token) {
      if (el) el.style.display = "none";
      return;
    }
    const shown = tip();
    shown.textContent = token.title;
    shown.style.display = "block";
    const x = Math.min(e.clientX + 14, window.innerWidth - shown.offsetWidth - 8);
    shown.style.left = Math.max(x, 4) + "px";
    shown.style.top = e.clientY + 18 + "px";
  });

  /* A new page starts at its top (dcc.Link keeps the scroll position of the page it leaves). */
  window.addEventListener("_dashprivate_pushstate", function () { window.scrollTo(0, 0); });

  /* "+ add to set": its confirmation also appears where the click was, for a moment. */
  let lastAdd = null;
  document.addEventListener("click", function (e) {
    if (e.target.closest && e.target.closest(".nd-add, #set-add-top")) lastAdd = { x: e.clientX, y: e.clientY, at: Date.now() };
  }, true);
  function toast(feedback) {
    if (!lastAdd || Date.now() - lastAdd.at > 15000 || !feedback.textContent) return;
    const el = document.createElement("div");
    const child = feedback.firstElementChild;
    el.className = "nd-toast " + (child ? child.className : "");
    el.textContent = feedback.textContent;
    el.style.left = Math.max(Math.min(lastAdd.x + 12, window.innerWidth - 320), 4) + "px";
    el.style.top = lastAdd.y - 10 + "px";
    document.body.appendChild(el);
    lastAdd = null;
    setTimeout(function () { el.remove(); }, 2500);
  }
  new MutationObserver(function (mutations) {
    for (const m of mutations) {
      const feedback = m.target.closest ? m.target.closest("#set-feedback") : null;
      if (feedback) return toast(feedback);
    }
  }).observe(document.documentElement, { childList: true, subtree: true });

  /* The probe's tokens: a click selects the token (its index) for the server's callback. */
  document.addEventListener("click", function (e) {
    const token = e.target.closest && e.target.closest("#probe-tokens .nd-tokens > span");
    if (!token || !window.dash_clientside || !window.dash_clientside.set_props) return;
    const index = Array.prototype.indexOf.call(token.parentNode.children, token);
    window.dash_clientside.set_props("probe-selected-token", { data: { index: index, at: Date.now() } });
  });

  /* Attention arcs (the text probe, render.attention_arcs): tokens in one line, built as text, and
   * an SVG above them with one arc per [query, key, weight] from data-arcs, as opaque as the weight.
   * The hover of an arc gives its weight and the two tokens. */
  const SVG = "http://www.w3.org/2000/svg";

  /* As tokenDisplay, but on one line: newlines and tabs shown, not kept. */
  function oneLineDisplay(token) {
    return token ? token.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192").replace(/\r/g, "\u240d") : "\u2205";
  }
  function renderArcs(box) {
    const data = box.getAttribute("data-arcs");
    if (box.ndRendered === data) return;
    box.ndRendered = data;
    const { tokens, arcs, scale } = JSON.parse(data);
    const line = document.createElement("div");
    line.className = "nd-arc-tokens";
    tokens.forEach(function (token, i) {
      const span = document.createElement("span");
      span.textContent = oneLineDisplay(token);
      span.title = pyRepr(token) + "  position " + i;
      line.appendChild(span);
    });
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "nd-arc-svg");
    box.replaceChildren(svg, line);
    const spans = line.children;
    const centre = function (i) { return spans[i].offsetLeft + spans[i].offsetWidth / 2; };
    const longest = arcs.reduce(function (m, a) { return Math.max(m, Math.abs(centre(a[0]) - centre(a[1]))); }, 1);
    const height = Math.min(120, longest / 2 + 8);
    svg.setAttribute("width", String(line.scrollWidth));
    svg.setAttribute("height", String(height));
    arcs.forEach(function (a) {
      const q = centre(a[0]), k = centre(a[1]);
      const rise = Math.max(6, (height - 4) * Math.abs(q - k) / longest);
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", "M" + k + "," + height + " C" + k + "," + (height - rise) + " " + q + "," + (height - rise) + " " + q + "," + height);
      path.setAttribute("stroke", "rgba(" + scale + "," + Math.max(a[2], 0.08).toFixed(2) + ")");
      path.setAttribute("stroke-width", String(1 + 3 * a[2]));
      path.setAttribute("fill", "none");
      const title = document.createElementNS(SVG, "title");
      title.textContent = pyRepr(tokens[a[0]]) + " (" + a[0] + ") attends to " + pyRepr(tokens[a[1]]) + " (" + a[1] + "): " + a[2].toFixed(3);
      path.appendChild(title);
      svg.appendChild(path);
    });
  }

  function renderArcsIn(node) {
    if (node.nodeType !== 1) return;
    if (node.matches(".nd-arcs[data-arcs]")) renderArcs(node);
    else node.querySelectorAll(".nd-arcs[data-arcs]").forEach(renderArcs);
  }
  new MutationObserver(function (mutations) {
    for (const m of mutations) {
      if (m.type === "attributes") renderArcs(m.target);
      else if (!m.target.ndRendered) m.addedNodes.forEach(renderArcsIn);
    }
  }).observe(document.documentElement, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-arcs"] });

  /* Client-side navigation, as dcc.Link does it: no page reload. */
  function navigate(path) {
    window.history.pushState({}, "", path);
    window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
    window.scrollTo(0, 0);
  }

  function decode(b64, Type) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Type(bytes.buffer);
  }

  /* The units table's payload (columns of little-endian typed arrays) -> the grid's rows. */
  function unitRows(data) {
    if (!data) return [];
    const source = decode(data.source, Uint16Array);
    const unit = decode(data.unit, Int32Array);
    const metrics = Object.keys(data.metrics).map(function (m) { return [m, decode(data.metrics[m], Float32Array)]; });
    const rows = new Array(data.n);
    for (let i = 0; i < data.n; i++) {
      const s = data.sources[source[i]];
      const row = {
        ref: s.prefix ? s.prefix + unit[i] : s.id + "/" + unit[i],
        key: s.id + "/" + unit[i],
        path: s.href + unit[i],
        order: source[i] * 2147483648 + unit[i],
        source: s.id, layer: s.layer, kind: s.kind,
      };
      for (const [m, values] of metrics) row[m] = Number.isNaN(values[i]) ? null : values[i];
      rows[i] = row;
    }
    return rows;
  }

  /* The table's payload, from its own address (units-data holds it): the server answers with an
   * ETag, so the browser's cache keeps it and a later visit gets a 304 instead of the whole table. */
  async function fetchUnitsTable(source) {
    if (!source || !source.url) return null;
    const response = await fetch(source.url, { credentials: "same-origin" });
    if (!response.ok) throw new Error("the units table answered " + response.status);
    return response.json();
  }

  /* Rows go to the grid through its API, not through a Dash prop: 100k row objects in Dash's
   * store would be copied and walked on every update. The starting filter goes to the grid's
   * filterModel prop only after the rows are in: applied to the empty grid it can be reported back
   * as empty and lost. */
  async function fillUnitsGrid(source, startFilter, gridId) {
    const api = await window.dash_ag_grid.getApiAsync(gridId);
    let data;
    try {
      data = await fetchUnitsTable(source);
    } catch (e) {
      return ["Could not load the units: " + e.message + ". Reload the page to try again.", {}];
    }
    const rows = unitRows(data);
    api.setGridOption("rowData", rows);
    return [rows.length.toLocaleString("en-US") + " units", startFilter || {}];
  }

  /* The grid's rows after its filter (virtualRowData): how many, and which (as source/index). */
  function countShownUnits(rows) {
    if (!rows) return "";
    return rows.length.toLocaleString("en-US") + (rows.length === 1 ? " unit shown" : " units shown");
  }

  function shownUnits(nClicks, rows) {
    return { clicks: nClicks, units: (rows || []).map(function (row) { return row.key; }) };
  }

  /* As render.fraction_text: 12.34%, and a small fraction readable ("0.0015% · 1 in 65k"). */
  function fractionText(value) {
    if (value <= 0 || value >= 0.001) return (100 * value).toFixed(2) + "%";
    return (100 * value).toPrecision(2).replace(/0+$/, "").replace(/\.$/, "") + "%";
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    neurodash: { fillUnitsGrid: fillUnitsGrid, countShownUnits: countShownUnits, shownUnits: shownUnits },
  });

  window.dashAgGridComponentFunctions = Object.assign({}, window.dashAgGridComponentFunctions, {
    UnitLink: function (props) {
      const path = props.data.path;
      return React.createElement("a", {
        href: path,
        className: "nd-grid-link",
        onClick: function (e) {
          if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;
          e.preventDefault();
          navigate(path);
        },
      }, props.value);
    },
  });

  window.dashAgGridFunctions = Object.assign({}, window.dashAgGridFunctions, {
    ndFixed: function (value, digits) {
      return value === null || value === undefined ? "" : value.toFixed(digits);
    },
    ndPercent: function (value) {
      return value === null || value === undefined ? "" : fractionText(value);
    },
    ndCompareUnits: function (nodeA, nodeB) {
      return nodeA.data.order - nodeB.data.order;
    },
  });
})();
