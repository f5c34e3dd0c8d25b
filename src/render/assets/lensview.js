/* lensview.js: draws a lensmap grid (the JSON of `lensmap run --json`) as an
 * interactive heatmap. No dependencies, no network. Used by the HTML output
 * of `lensmap run` and by the `lensmap serve` page.
 *
 * The script only draws. Every rule (cell colours, palettes and colour-bar
 * ticks, token and row labels, default window and zoom, top-1 counts, layout
 * sizes) comes from the view spec that lensmap resolves in Rust
 * (src/render/view.rs): the HTML page embeds it, `lensmap serve` answers it
 * at POST /api/view.
 *
 * API
 * ---
 *   var view = LensView.mount(element, grid, spec);
 *
 * Draws into `element` (its contents are replaced; a view already mounted
 * there is destroyed first) and returns the view.
 *
 * grid: the grid object, or its JSON text.
 * spec: the view spec (object or JSON text): title, subtitle, stat, window
 *   [start, end), zoom, and the rules above. The caller may change title,
 *   subtitle, stat (one of spec.stats), window and zoom before mounting, and
 *   may add
 *   onChange  function (state), called with view.getState() whenever the
 *             statistic, window or zoom changes (by the user or a setter).
 *
 * view:
 *   grid, spec, element  the parsed grid and spec, and the view's root element;
 *   setStat(stat)        switch the colour statistic (unknown ones are ignored);
 *   setWindow(start, end) move/resize the window (clamped to the grid);
 *   setZoom(pos)         show position `pos` in panel C;
 *   getState()           a copy of {stat, window: [start, end], zoom};
 *   tooltipText(row, pos) the hover text of a cell;
 *   destroy()            remove the view's elements, its tooltip (which lives
 *                        in document.body) and its event listeners; the
 *                        setters do nothing afterwards.
 *
 * The DOM the tests read: cells are rect.lv-cell[data-row][data-pos]
 * [data-top1] with their text.lv-cell-text, x labels text.lv-xlabel[data-pos]
 * [data-kind], kind boxes rect.lv-kind, zoom counts .lv-zoomcount
 * [data-token-id][data-count], the tooltip div.lv-tooltip[data-row][data-pos]
 * in document.body.
 */
(function (global) {
  'use strict';

  var SPEC_VERSION = 1;
  var SVGNS = 'http://www.w3.org/2000/svg';

  function hexRgb(h) {
    var v = parseInt(h.replace('#', ''), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }
  /* A cell whose logits were not finite (--allow-nonfinite): hatched, never a colour of the scale.
     For kl, also when the position's output row is invalid (no reference). */
  function invalidCell(grid, stat, row, pos) {
    var inv = grid.invalid || [];
    var at = function (r) { return !!(inv[r] && inv[r][pos]); };
    return at(row) || (stat === 'kl' && at(grid.n_rows - 1));
  }

  function el(tag, attrs, parent, text) {
    var e = document.createElement(tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function sv(tag, attrs, parent, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v, d) { return v === null || v === undefined ? 'n/a' : (+v).toFixed(d); }
  function prob(p) { return p >= 0.001 || p === 0 ? p.toFixed(3) : p.toExponential(1); }

  function mount(root, gridJson, specJson) {
    var grid = typeof gridJson === 'string' ? JSON.parse(gridJson) : gridJson;
    var spec = typeof specJson === 'string' ? JSON.parse(specJson) : specJson;
    if (!spec || spec.version !== SPEC_VERSION) {
      throw new Error('LensView.mount needs the view spec (version ' + SPEC_VERSION +
        ') that lensmap writes into its HTML page or answers at POST /api/view');
    }
    // One view per element: a new mount replaces the old one, tooltip included.
    if (root.lvView) root.lvView.destroy();
    // Every listener goes through listen(), so destroy() can remove them all.
    var listeners = [], destroyed = false;
    function listen(target, type, fn) {
      target.addEventListener(type, fn);
      listeners.push([target, type, fn]);
    }
    var L = spec.layout, stats = {};
    spec.stats.forEach(function (s) { stats[s.key] = s; });
    /* The display form (tooltips) and the cut label (cells, axes) of a token text. */
    function display(text) { var l = spec.labels[text]; return l ? l[0] : String(text); }
    function label(text) { var l = spec.labels[text]; return l ? l[1] : String(text); }
    /* The default zoom of a window (as resolve_zoom; see ZoomRule). */
    function defaultZoom(w) {
      var d = spec.zoom_rule.first_dummy[w[0]], t = spec.zoom_rule.tail_template[w[1] - 1];
      if (d < w[1]) return d;
      return t !== null && t >= w[0] ? t : w[1] - 1;
    }
    var n = grid.tokens.length, rows = grid.n_rows;
    var state = {
      stat: stats[spec.stat] ? spec.stat : spec.stats[0].key,
      win: [spec.window[0], spec.window[1]],
      zoom: spec.zoom
    };
    /* A cell's fill ('#rrggbb') and text colour under statistic s. */
    function cellColor(s, r, p) { return '#' + s.cells[r].substr(7 * p, 6); }
    function cellText(s, r, p) { return s.cells[r].charAt(7 * p + 6) === 'w' ? '#ffffff' : '#000000'; }

    root.innerHTML = '';
    var box = el('div', { 'class': 'lv' }, root);
    el('h1', { 'class': 'lv-title' }, box, spec.title);
    spec.subtitle.forEach(function (line) {
      if (line) el('div', { 'class': 'lv-sub' }, box, line);
    });

    // Controls: statistic, window.
    var ctl = el('div', { 'class': 'lv-controls' }, box);
    var lab = el('label', {}, ctl, 'colour: ');
    var sel = el('select', { 'class': 'lv-stat' }, lab);
    spec.stats.forEach(function (s) {
      var o = el('option', { value: s.key }, sel, s.name);
      if (s.key === state.stat) o.selected = true;
    });
    listen(sel, 'change', function () { view.setStat(sel.value); });
    var winLab = el('label', { 'class': 'lv-winlab' }, ctl);
    var slider = el('input', { type: 'range', 'class': 'lv-slider', min: 0, step: 1 }, ctl);
    var widthIn = el('input', { type: 'number', 'class': 'lv-width', min: L.window_min, max: L.window_max }, ctl);
    el('span', { 'class': 'lv-hint' }, ctl, 'columns \u00b7 hover a cell for details, click a column to zoom');
    listen(slider, 'input', function () {
      var w = state.win[1] - state.win[0], s = +slider.value;
      view.setWindow(s, s + w);
    });
    listen(widthIn, 'change', function () {
      var w = Math.max(L.window_min, Math.min(L.window_max, n, +widthIn.value || state.win[1] - state.win[0]));
      var s = Math.min(state.win[0], n - w);
      view.setWindow(s, s + w);
    });

    // A: overview canvas with a window marker.
    var ov = el('div', { 'class': 'lv-overview' }, box);
    var canvas = el('canvas', { width: n, height: rows, 'class': 'lv-ov-canvas' }, ov);
    canvas.style.height = Math.max(60, Math.min(160, rows * 4)) + 'px';
    var marker = el('div', { 'class': 'lv-ov-marker' }, ov);
    var kinds = el('canvas', { width: n, height: 1, 'class': 'lv-ov-kinds' }, ov);
    listen(canvas, 'click', function (e) {
      var r = canvas.getBoundingClientRect();
      var p = Math.floor((e.clientX - r.left) / r.width * n);
      var w = state.win[1] - state.win[0];
      var s = Math.max(0, Math.min(n - w, p - (w >> 1)));
      view.setWindow(s, s + w);
    });

    // B + C + colour bar in one SVG.
    var main = el('div', { 'class': 'lv-main' }, box);
    var svg = sv('svg', { 'class': 'lv-svg' }, main);
    // The tooltip lives in <body> (so no container clips it); destroy() removes it.
    var tip = el('div', { 'class': 'lv-tooltip', role: 'tooltip' }, document.body);
    tip.style.display = 'none';

    function tooltipText(row, pos) {
      var t = grid.tokens[pos], lines = [];
      lines.push('layer ' + spec.row_labels[row] + ' \u00b7 pos ' + pos + ' ' + label(t.text) + ' (' + t.kind + ')');
      if (invalidCell(grid, 'entropy', row, pos)) {
        lines.push('non-finite: the logits hold NaN or infinity (--allow-nonfinite)');
        return lines.join('\n');
      }
      if (grid.entropy[row][pos] === null) {
        lines.push('not computed (outside --positions)');
        return lines.join('\n');
      }
      grid.topk[row][pos].forEach(function (k, i) {
        lines.push((i + 1) + '. ' + display(k.text) + '  ' + prob(k.prob));
      });
      lines.push('entropy ' + fmt(grid.entropy[row][pos], 3) + ' nats \u00b7 KL ' + fmt(grid.kl_to_final[row][pos], 3) + ' nats');
      var nt = grid.next_token[row][pos];
      lines.push(nt ? 'next token ' + label(grid.tokens[pos + 1].text) + ': p ' + prob(nt.prob) + ', rank ' + nt.rank : 'next token: none (last position)');
      (grid.tracked || []).forEach(function (tr) {
        var c = tr.cells[row][pos];
        lines.push(tr.role + ' ' + display(tr.token_text) + ': p ' + prob(c.prob) + ', rank ' + c.rank);
      });
      return lines.join('\n');
    }
    function showTip(row, pos, e) {
      tip.textContent = tooltipText(row, pos);
      tip.setAttribute('data-row', row);
      tip.setAttribute('data-pos', pos);
      tip.style.display = 'block';
      var x = (e && e.clientX || 0) + 14, y = (e && e.clientY || 0) + 14;
      var w = tip.offsetWidth, h = tip.offsetHeight;
      if (x + w > window.innerWidth) x = Math.max(0, x - w - 28);
      if (y + h > window.innerHeight) y = Math.max(0, y - h - 28);
      tip.style.left = x + 'px';
      tip.style.top = y + 'px';
    }
    listen(svg, 'mouseover', function (e) {
      var c = e.target.closest && e.target.closest('[data-row][data-pos]');
      if (c && c.classList.contains('lv-cell')) showTip(+c.getAttribute('data-row'), +c.getAttribute('data-pos'), e);
    });
    listen(svg, 'mousemove', function (e) {
      if (tip.style.display === 'block') showTip(+tip.getAttribute('data-row'), +tip.getAttribute('data-pos'), e);
    });
    listen(svg, 'mouseleave', function () { tip.style.display = 'none'; });
    listen(svg, 'click', function (e) {
      var c = e.target.closest && e.target.closest('[data-pos]');
      if (c) view.setZoom(+c.getAttribute('data-pos'));
    });

    function drawOverview() {
      var s = stats[state.stat];
      var ctx = canvas.getContext('2d'), img = ctx.createImageData(n, rows);
      for (var r = 0; r < rows; r++) {
        for (var p = 0; p < n; p++) {
          var c = hexRgb(s.cells[r].substr(7 * p, 6));
          // One pixel a cell: invalid cells alternate dark and white along diagonals.
          if (invalidCell(grid, state.stat, r, p)) c = (r + p) % 2 ? [51, 51, 51] : [255, 255, 255];
          var o = ((rows - 1 - r) * n + p) * 4;
          img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      var kctx = kinds.getContext('2d'), kimg = kctx.createImageData(n, 1);
      grid.tokens.forEach(function (t, p) {
        var c = spec.kind_colors[t.kind] ? hexRgb(spec.kind_colors[t.kind]) : [255, 255, 255];
        kimg.data.set([c[0], c[1], c[2], 255], p * 4);
      });
      kctx.putImageData(kimg, 0, 0);
    }
    function placeMarker() {
      marker.style.left = (state.win[0] / n * 100) + '%';
      marker.style.width = ((state.win[1] - state.win[0]) / n * 100) + '%';
      var w = state.win[1] - state.win[0];
      slider.max = n - w;
      slider.value = state.win[0];
      widthIn.value = w;
      winLab.textContent = 'window: positions ' + state.win[0] + '\u2013' + (state.win[1] - 1) + ' of ' + n + ' ';
    }

    function drawMain() {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      var s = stats[state.stat], CW = L.cell_w, CH = L.cell_h;
      var w0 = state.win[0], w1 = state.win[1], cols = w1 - w0;
      var gx = L.row_label_w, gy = 26, gw = cols * CW, gh = rows * CH;
      var cx = gx + gw + 40, cw = L.zoom_w, barx = cx + cw + 30;
      var counts = spec.top1_counts[state.zoom];
      var height = gy + gh + 60 + Math.max(0, counts.length * 14 + 40 - 50);
      svg.setAttribute('width', barx + 90);
      svg.setAttribute('height', height);
      svg.setAttribute('viewBox', '0 0 ' + (barx + 90) + ' ' + height);
      sv('text', { x: gx, y: gy - 8, 'class': 'lv-region' }, svg, 'positions ' + w0 + '\u2013' + (w1 - 1));
      var hatch = sv('pattern', { id: 'lv-hatch', width: 5, height: 5, patternUnits: 'userSpaceOnUse',
                                  patternTransform: 'rotate(45)' }, sv('defs', {}, svg));
      sv('rect', { width: 5, height: 5, fill: '#ffffff' }, hatch);
      sv('path', { d: 'M0 0V5', stroke: '#333333', 'stroke-width': 2 }, hatch);
      var g = sv('g', { 'class': 'lv-cells' }, svg), gt = sv('g', { 'class': 'lv-cell-texts' }, svg);
      for (var r = 0; r < rows; r++) {
        var y = gy + (rows - 1 - r) * CH;
        sv('text', { x: gx - 5, y: y + CH / 2 + 3.4, 'class': 'lv-rowlab' }, svg, spec.row_labels[r]);
        for (var p = w0; p < w1; p++) {
          var x = gx + (p - w0) * CW;
          var top = grid.topk[r][p][0];
          var bad = invalidCell(grid, state.stat, r, p);
          sv('rect', { 'class': 'lv-cell', 'data-row': r, 'data-pos': p, 'data-top1': top ? display(top.text) : '',
                       'data-invalid': bad ? 'true' : 'false',
                       x: x, y: y, width: CW, height: CH, fill: bad ? 'url(#lv-hatch)' : cellColor(s, r, p) }, g);
          sv('text', { x: x + CW / 2, y: y + CH / 2 + 3.4, fill: cellText(s, r, p),
                       'data-row': r, 'data-pos': p, 'class': 'lv-cell lv-cell-text' }, gt, top ? label(top.text) : '');
        }
      }
      // X labels with template / dummy boxes.
      for (var q = w0; q < w1; q++) {
        var t = grid.tokens[q], lx = gx + (q - w0) * CW, ly = gy + gh + 4;
        if (t.kind !== 'text') {
          sv('rect', { x: lx + 2, y: ly, width: CW - 4, height: 15, rx: 2, 'data-pos': q,
                       'class': 'lv-kind lv-kind-' + t.kind }, svg);
        }
        sv('text', { x: lx + CW / 2, y: ly + 11, 'data-pos': q, 'data-kind': t.kind,
                     'class': 'lv-xlabel lv-xlabel-' + t.kind }, svg, label(t.text));
      }
      // Zoom column, connector and panel C.
      var z = state.zoom;
      if (z >= w0 && z < w1) {
        var zx = gx + (z - w0) * CW;
        sv('rect', { x: zx, y: gy - 1, width: CW, height: gh + 2, 'class': 'lv-zoomcol' }, svg);
        sv('path', { d: 'M' + (zx + CW / 2) + ' ' + (gy - 2) + 'V' + (gy - 14) + 'H' + cx, 'class': 'lv-connector' }, svg);
      }
      var panelH = gh + 30 + 20 + counts.length * 14 + 8;
      sv('rect', { x: cx, y: gy - 22, width: cw, height: panelH, rx: 3, 'class': 'lv-zoompanel' }, svg);
      sv('text', { x: cx + 8, y: gy - 8, 'class': 'lv-region lv-zoomtitle' }, svg, 'C  pos ' + z + ': ' + label(grid.tokens[z].text));
      for (r = 0; r < rows; r++) {
        var tk = grid.topk[r][z][0], yy = gy + (rows - 1 - r) * CH + CH / 2;
        var zr = sv('g', { 'class': 'lv-zoomrow', 'data-row': r, 'data-token-id': tk ? tk.id : -1 }, svg);
        sv('text', { x: cx + 42, y: yy + 3.4, 'class': 'lv-rowlab' }, zr, spec.row_labels[r]);
        sv('text', { x: cx + 50, y: yy + 3.4 }, zr, tk ? label(tk.text) : '');
        sv('text', { x: cx + 140, y: yy + 3.4, 'text-anchor': 'end' }, zr, tk ? tk.prob.toFixed(2) : '');
        sv('rect', { x: cx + 146, y: yy - 3.5, width: 36, height: 7, fill: '#eeeeee' }, zr);
        sv('rect', { x: cx + 146, y: yy - 3.5, width: 36 * Math.max(0, Math.min(1, tk ? tk.prob : 0)), height: 7, 'class': 'lv-probbar' }, zr);
      }
      var ty = gy + gh + 22;
      sv('text', { x: cx + 8, y: ty, 'class': 'lv-muted' }, svg, 'most frequent top-1:');
      counts.forEach(function (c, i) {
        var cg = sv('g', { 'class': 'lv-zoomcount', 'data-token-id': c.id, 'data-count': c.count }, svg);
        sv('text', { x: cx + 16, y: ty + 14 * (i + 1) }, cg, label(c.text) + ' \u00d7' + c.count);
      });
      drawColorbar(s, barx, gy + 14, gh - 14);
    }
    function drawColorbar(s, x, y, h) {
      var id = 'lvgrad' + Math.floor(Math.random() * 1e9);
      var grad = sv('linearGradient', { id: id, x1: 0, y1: 1, x2: 0, y2: 0 }, sv('defs', {}, svg));
      s.palette.forEach(function (c, i) { sv('stop', { offset: (i / (s.palette.length - 1) * 100) + '%', 'stop-color': c }, grad); });
      sv('rect', { x: x, y: y, width: 14, height: h, fill: 'url(#' + id + ')', 'class': 'lv-bar' }, svg);
      s.ticks.forEach(function (tk) {
        var ty = y + h - tk[0] * h;
        sv('path', { d: 'M' + (x + 14) + ' ' + ty + 'h3', 'class': 'lv-tick' }, svg);
        sv('text', { x: x + 19, y: ty + 3.4, 'class': 'lv-muted' }, svg, tk[1]);
      });
      if (s.clip_label) {
        sv('path', { d: 'M' + x + ' ' + y + 'L' + (x + 7) + ' ' + (y - 11) + 'L' + (x + 14) + ' ' + y + 'Z', fill: s.palette[s.palette.length - 1], 'class': 'lv-bar' }, svg);
        sv('text', { x: x - 2, y: y - 15, 'class': 'lv-muted lv-small' }, svg, s.clip_label);
      }
      var tx = x + 62, ty = y + h / 2;
      sv('text', { x: tx, y: ty, transform: 'rotate(-90 ' + tx + ' ' + ty + ')', 'text-anchor': 'middle', 'class': 'lv-bartitle' }, svg, s.title);
    }

    function getState() {
      return { stat: state.stat, window: [state.win[0], state.win[1]], zoom: state.zoom };
    }
    /* Run a state change; tell spec.onChange if it changed anything. */
    function change(f) {
      if (destroyed) return;
      var before = JSON.stringify(getState());
      f();
      var now = getState();
      if (spec.onChange && JSON.stringify(now) !== before) spec.onChange(now);
    }

    var view = {
      grid: grid,
      spec: spec,
      element: box,
      setStat: function (stat) {
        change(function () {
          if (!stats[stat]) return;
          state.stat = stat; sel.value = stat; drawOverview(); drawMain();
        });
      },
      setWindow: function (s, e) {
        change(function () {
          s = Math.max(0, Math.min(n - 1, s | 0)); e = Math.max(s + 1, Math.min(n, e | 0));
          state.win = [s, e];
          if (state.zoom < s || state.zoom >= e) state.zoom = defaultZoom(state.win);
          placeMarker(); drawMain();
        });
      },
      setZoom: function (pos) {
        change(function () {
          if (pos >= 0 && pos < n) { state.zoom = pos; drawMain(); }
        });
      },
      getState: getState,
      tooltipText: tooltipText,
      destroy: function () {
        if (destroyed) return;
        destroyed = true;
        listeners.forEach(function (l) { l[0].removeEventListener(l[1], l[2]); });
        listeners = [];
        if (tip.parentNode) tip.parentNode.removeChild(tip);
        if (box.parentNode) box.parentNode.removeChild(box);
        if (root.lvView === view) root.lvView = null;
      }
    };
    root.lvView = view;
    var single = state.win[0] === 0 && state.win[1] === n;
    ov.style.display = single ? 'none' : '';
    slider.style.display = widthIn.style.display = single ? 'none' : '';
    winLab.style.display = single ? 'none' : '';
    drawOverview(); placeMarker(); drawMain();
    return view;
  }

  global.LensView = { mount: mount };
})(typeof window !== 'undefined' ? window : this);
