/* lensview.js: draws a lensmap grid (the JSON of `lensmap run --json`) as an
 * interactive heatmap. No dependencies, no network. Used by the HTML output
 * of `lensmap run` and by the `lensmap serve` page.
 *
 * API
 * ---
 *   var view = LensView.mount(element, grid, options);
 *
 * Draws into `element` (its contents are replaced; a view already mounted
 * there is destroyed first) and returns the view.
 *
 * grid: the grid object, or its JSON text.
 * options (all optional):
 *   title     heading text (default 'Rehearsal at "dummy tokens"');
 *   subtitle  array of lines under it (default: the model file);
 *   stat      colour statistic: 'entropy' (default), 'kl', 'target-prob',
 *             'target-rank', 'next-token-prob' (the target ones only when the
 *             grid tracks a target);
 *   window    [start, end): the positions of the magnified region B, end
 *             exclusive (default: the template/dummy tail and a few before);
 *   zoom      the position shown in panel C (default: the first dummy);
 *   onChange  function (state), called with view.getState() whenever the
 *             statistic, window or zoom changes (by the user or a setter).
 *
 * view:
 *   grid, element        the parsed grid and the view's root element;
 *   setStat(stat)        switch the colour statistic (unknown ones are ignored);
 *   setWindow(start, end) move/resize the window (clamped to the grid);
 *   setZoom(pos)         show position `pos` in panel C;
 *   getState()           a copy of {stat, window: [start, end], zoom};
 *   tooltipText(row, pos) the hover text of a cell;
 *   destroy()            remove the view's elements, its tooltip (which lives
 *                        in document.body) and its event listeners; the
 *                        setters do nothing afterwards.
 *
 * LensView also exports the helpers paletteAt(name, t), label(text),
 * display(text) and textColor(rgb).
 *
 * The DOM the tests read: cells are rect.lv-cell[data-row][data-pos]
 * [data-top1], x labels text.lv-xlabel[data-pos][data-kind], kind boxes
 * rect.lv-kind, zoom counts .lv-zoomcount[data-token-id][data-count], the
 * tooltip div.lv-tooltip[data-row][data-pos] in document.body.
 *
 * Colours use the same maps as the static figure (src/render/colormap.rs):
 * control points spaced evenly, linear interpolation, 8-bit rounding.
 */
(function (global) {
  'use strict';

  var PALETTES = {
    'RdBu_r': ['#053061', '#2166ac', '#4393c3', '#92c5de', '#d1e5f0', '#f7f7f7',
               '#fddbc7', '#f4a582', '#d6604d', '#b2182b', '#67001f'],
    'Blues': ['#f7fbff', '#deebf7', '#c6dbef', '#9ecae1', '#6baed6', '#4292c6',
              '#2171b5', '#08519c', '#08306b']
  };
  PALETTES['Blues_r'] = PALETTES['Blues'].slice().reverse();
  var MISSING = '#bdbdbd';
  var STATS = {
    'entropy': { lo: 0, hi: 10, palette: 'RdBu_r', title: 'Entropy (nats)', clips: true, name: 'entropy' },
    'kl': { lo: 0, hi: 10, palette: 'RdBu_r', title: 'KL to final (nats)', clips: true, name: 'KL to final' },
    'target-prob': { lo: 0, hi: 1, palette: 'Blues', title: 'Target probability', name: 'target prob' },
    'target-rank': { lo: 1, hi: 0, log: true, palette: 'Blues_r', title: 'Target rank (log)', name: 'target rank' },
    'next-token-prob': { lo: 0, hi: 1, palette: 'Blues', title: 'Next-token probability', name: 'next-token prob' }
  };
  var CELL_W = 58, CELL_H = 15, LABEL_W = 48, MAX_LABEL = 7;
  var SVGNS = 'http://www.w3.org/2000/svg';

  function hexRgb(h) {
    var v = parseInt(h.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }
  function hex(c) {
    return '#' + c.map(function (x) { return (x < 16 ? '0' : '') + x.toString(16); }).join('');
  }
  /* Colour at t in [0, 1] of a named palette, as [r, g, b]. */
  function paletteAt(name, t) {
    var stops = PALETTES[name].map(hexRgb);
    t = isNaN(t) ? 0 : Math.min(1, Math.max(0, t));
    var x = t * (stops.length - 1);
    var i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    return [0, 1, 2].map(function (k) {
      var a = stops[i][k], b = stops[i + 1][k];
      return Math.min(255, Math.max(0, Math.round(a + (b - a) * f)));
    });
  }
  function luminance(c) {
    var l = c.map(function (x) {
      x /= 255;
      return x <= 0.04045 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  }
  function textColor(c) {
    var l = luminance(c);
    return 1.05 / (l + 0.05) > (l + 0.05) / 0.05 ? '#ffffff' : '#000000';
  }

  /* Token display rules, as src/render/labels.rs. */
  function unit(ch) {
    if (ch === ' ' || ch === '\u0120' || ch === '\u2581') return '_';
    if (ch === '\n') return '\\n';
    if (ch === '\t') return '\\t';
    if (ch === '\r') return '\\r';
    var c = ch.codePointAt(0);
    if (c < 0x20 || (c >= 0x7f && c < 0xa0)) return '\\x' + (c < 16 ? '0' : '') + c.toString(16);
    if (/\s/.test(ch)) return '_';
    if ((c >= 0x200b && c <= 0x200f) || (c >= 0x202a && c <= 0x202e) || (c >= 0x2060 && c <= 0x206f) || c === 0xfeff) return '\ufffd';
    return ch;
  }
  function display(text) {
    if (!text) return '\u2205';
    return Array.from(text).map(unit).join('');
  }
  function label(text) {
    var full = display(text);
    if (Array.from(full).length <= MAX_LABEL) return full;
    var out = '', n = 0, chars = Array.from(text);
    for (var i = 0; i < chars.length; i++) {
      var u = unit(chars[i]), len = Array.from(u).length;
      if (n + len > MAX_LABEL - 1) break;
      out += u; n += len;
    }
    return out + '...';
  }

  function target(grid) {
    var t = (grid.tracked || []).filter(function (x) { return x.role === 'target'; });
    return t.length ? t[0] : null;
  }
  function value(grid, stat, row, pos) {
    switch (stat) {
      case 'entropy': return grid.entropy[row][pos];
      case 'kl': return grid.kl_to_final[row][pos];
      case 'next-token-prob': var nt = grid.next_token[row][pos]; return nt ? nt.prob : null;
      case 'target-prob': case 'target-rank':
        var t = target(grid); if (!t) return null;
        var c = t.cells[row][pos];
        if (c.prob === null) return null; // outside --positions
        return stat === 'target-prob' ? c.prob : c.rank;
    }
    return null;
  }
  /* A cell whose logits were not finite (--allow-nonfinite): hatched, never a colour of the scale.
     For kl, also when the position's output row is invalid (no reference). */
  function invalidCell(grid, stat, row, pos) {
    var inv = grid.invalid || [];
    var at = function (r) { return !!(inv[r] && inv[r][pos]); };
    return at(row) || (stat === 'kl' && at(grid.n_rows - 1));
  }
  function scaleFor(grid, stat) {
    var s = Object.assign({}, STATS[stat] || STATS.entropy);
    if (s.log) s.hi = Math.max(2, grid.model.vocab_size || 2);
    return s;
  }
  function scaleT(s, v) {
    var t = s.log ? (Math.log(Math.max(v, s.lo)) - Math.log(s.lo)) / (Math.log(s.hi) - Math.log(s.lo))
                  : (v - s.lo) / (s.hi - s.lo);
    return Math.min(1, Math.max(0, t));
  }
  /* [r, g, b] of a value, or null when missing. */
  function colorOf(s, v) {
    return (v === null || v === undefined || isNaN(v)) ? null : paletteAt(s.palette, scaleT(s, v));
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

  /* Default window: the template/dummy tail plus 4 before it, at least the last 12, at most 32. */
  function defaultWindow(grid) {
    var n = grid.tokens.length;
    if (n <= 40) return [0, n];
    var lastText = -1;
    grid.tokens.forEach(function (t, i) { if (t.kind === 'text') lastText = i; });
    var s = Math.max(0, n - 12);
    if (lastText + 1 < n) s = Math.min(s, Math.max(0, lastText + 1 - 4));
    return [Math.max(s, n - 32), n];
  }
  /* Default zoom: the first dummy, else the last template position after the last text token, else the last. */
  function defaultZoom(grid, w) {
    var z = -1, i;
    for (i = w[0]; i < w[1] && z < 0; i++) if (grid.tokens[i].kind === 'dummy') z = i;
    for (i = w[1] - 1; i >= w[0] && z < 0 && grid.tokens[i].kind !== 'text'; i--) if (grid.tokens[i].kind === 'template') z = i;
    return z < 0 ? w[1] - 1 : z;
  }
  function rowLabel(grid, r) { return r + 1 === grid.n_rows ? 'output' : String(r); }

  function mount(root, gridJson, options) {
    var grid = typeof gridJson === 'string' ? JSON.parse(gridJson) : gridJson;
    options = options || {};
    // One view per element: a new mount replaces the old one, tooltip included.
    if (root.lvView) root.lvView.destroy();
    // Every listener goes through listen(), so destroy() can remove them all.
    var listeners = [], destroyed = false;
    function listen(target, type, fn) {
      target.addEventListener(type, fn);
      listeners.push([target, type, fn]);
    }
    var n = grid.tokens.length, rows = grid.n_rows;
    var state = {
      stat: options.stat && STATS[options.stat] ? options.stat : 'entropy',
      win: options.window || defaultWindow(grid),
      zoom: null
    };
    if (!target(grid) && /^target/.test(state.stat)) state.stat = 'entropy';
    state.zoom = options.zoom !== undefined && options.zoom !== null ? options.zoom : defaultZoom(grid, state.win);

    root.innerHTML = '';
    var box = el('div', { 'class': 'lv' }, root);
    el('h1', { 'class': 'lv-title' }, box, options.title || 'Rehearsal at "dummy tokens"');
    (options.subtitle || [grid.model.file]).forEach(function (line) {
      if (line) el('div', { 'class': 'lv-sub' }, box, line);
    });

    // Controls: statistic, window.
    var ctl = el('div', { 'class': 'lv-controls' }, box);
    var lab = el('label', {}, ctl, 'colour: ');
    var sel = el('select', { 'class': 'lv-stat' }, lab);
    ['entropy', 'kl', 'target-prob', 'target-rank', 'next-token-prob'].forEach(function (k) {
      if (/^target/.test(k) && !target(grid)) return;
      var o = el('option', { value: k }, sel, STATS[k].name);
      if (k === state.stat) o.selected = true;
    });
    listen(sel, 'change', function () { view.setStat(sel.value); });
    var winLab = el('label', { 'class': 'lv-winlab' }, ctl);
    var slider = el('input', { type: 'range', 'class': 'lv-slider', min: 0, step: 1 }, ctl);
    var widthIn = el('input', { type: 'number', 'class': 'lv-width', min: 2, max: 64 }, ctl);
    el('span', { 'class': 'lv-hint' }, ctl, 'columns \u00b7 hover a cell for details, click a column to zoom');
    listen(slider, 'input', function () {
      var w = state.win[1] - state.win[0], s = +slider.value;
      view.setWindow(s, s + w);
    });
    listen(widthIn, 'change', function () {
      var w = Math.max(2, Math.min(64, n, +widthIn.value || 12));
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
      lines.push('layer ' + rowLabel(grid, row) + ' \u00b7 pos ' + pos + ' ' + label(t.text) + ' (' + t.kind + ')');
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
      lines.push(nt ? 'next token ' + label((grid.tokens[pos + 1] || {}).text) + ': p ' + prob(nt.prob) + ', rank ' + nt.rank : 'next token: none (last position)');
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
      var s = scaleFor(grid, state.stat);
      var ctx = canvas.getContext('2d'), img = ctx.createImageData(n, rows);
      for (var r = 0; r < rows; r++) {
        for (var p = 0; p < n; p++) {
          var c = colorOf(s, value(grid, state.stat, r, p)) || hexRgb(MISSING);
          // One pixel a cell: invalid cells alternate dark and white along diagonals.
          if (invalidCell(grid, state.stat, r, p)) c = (r + p) % 2 ? [51, 51, 51] : [255, 255, 255];
          var o = ((rows - 1 - r) * n + p) * 4;
          img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      var kctx = kinds.getContext('2d'), kimg = kctx.createImageData(n, 1);
      grid.tokens.forEach(function (t, p) {
        var c = t.kind === 'dummy' ? [31, 95, 191] : t.kind === 'template' ? [143, 179, 232] : [255, 255, 255];
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
      var s = scaleFor(grid, state.stat);
      var w0 = state.win[0], w1 = state.win[1], cols = w1 - w0;
      var gx = LABEL_W, gy = 26, gw = cols * CELL_W, gh = rows * CELL_H;
      var cx = gx + gw + 40, cw = 190, barx = cx + cw + 30;
      var counts = top1Counts(state.zoom);
      var height = gy + gh + 60 + Math.max(0, Math.min(counts.length, 6) * 14 + 40 - 50);
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
        var y = gy + (rows - 1 - r) * CELL_H;
        sv('text', { x: gx - 5, y: y + CELL_H / 2 + 3.4, 'class': 'lv-rowlab' }, svg, rowLabel(grid, r));
        for (var p = w0; p < w1; p++) {
          var x = gx + (p - w0) * CELL_W;
          var c = colorOf(s, value(grid, state.stat, r, p));
          var top = grid.topk[r][p][0] || { text: '', prob: 0 };
          var bad = invalidCell(grid, state.stat, r, p);
          sv('rect', { 'class': 'lv-cell', 'data-row': r, 'data-pos': p, 'data-top1': display(top.text),
                       'data-invalid': bad ? 'true' : 'false',
                       x: x, y: y, width: CELL_W, height: CELL_H, fill: bad ? 'url(#lv-hatch)' : c ? hex(c) : MISSING }, g);
          sv('text', { x: x + CELL_W / 2, y: y + CELL_H / 2 + 3.4, fill: c ? textColor(c) : '#000000',
                       'data-row': r, 'data-pos': p, 'class': 'lv-cell lv-cell-text' }, gt, label(top.text));
        }
      }
      // X labels with template / dummy boxes.
      for (var q = w0; q < w1; q++) {
        var t = grid.tokens[q], lx = gx + (q - w0) * CELL_W, ly = gy + gh + 4;
        if (t.kind !== 'text') {
          sv('rect', { x: lx + 2, y: ly, width: CELL_W - 4, height: 15, rx: 2, 'data-pos': q,
                       'class': 'lv-kind lv-kind-' + t.kind }, svg);
        }
        sv('text', { x: lx + CELL_W / 2, y: ly + 11, 'data-pos': q, 'data-kind': t.kind,
                     'class': 'lv-xlabel lv-xlabel-' + t.kind }, svg, label(t.text));
      }
      // Zoom column, connector and panel C.
      var z = state.zoom;
      if (z >= w0 && z < w1) {
        var zx = gx + (z - w0) * CELL_W;
        sv('rect', { x: zx, y: gy - 1, width: CELL_W, height: gh + 2, 'class': 'lv-zoomcol' }, svg);
        sv('path', { d: 'M' + (zx + CELL_W / 2) + ' ' + (gy - 2) + 'V' + (gy - 14) + 'H' + cx, 'class': 'lv-connector' }, svg);
      }
      var panelH = gh + 30 + 20 + Math.min(counts.length, 6) * 14 + 8;
      sv('rect', { x: cx, y: gy - 22, width: cw, height: panelH, rx: 3, 'class': 'lv-zoompanel' }, svg);
      sv('text', { x: cx + 8, y: gy - 8, 'class': 'lv-region lv-zoomtitle' }, svg, 'C  pos ' + z + ': ' + label(grid.tokens[z].text));
      for (r = 0; r < rows; r++) {
        var tk = grid.topk[r][z][0] || { text: '', prob: 0, id: -1 }, yy = gy + (rows - 1 - r) * CELL_H + CELL_H / 2;
        var zr = sv('g', { 'class': 'lv-zoomrow', 'data-row': r, 'data-token-id': tk.id }, svg);
        sv('text', { x: cx + 42, y: yy + 3.4, 'class': 'lv-rowlab' }, zr, rowLabel(grid, r));
        sv('text', { x: cx + 50, y: yy + 3.4 }, zr, label(tk.text));
        sv('text', { x: cx + 140, y: yy + 3.4, 'text-anchor': 'end' }, zr, tk.prob.toFixed(2));
        sv('rect', { x: cx + 146, y: yy - 3.5, width: 36, height: 7, fill: '#eeeeee' }, zr);
        sv('rect', { x: cx + 146, y: yy - 3.5, width: 36 * Math.max(0, Math.min(1, tk.prob)), height: 7, 'class': 'lv-probbar' }, zr);
      }
      var ty = gy + gh + 22;
      sv('text', { x: cx + 8, y: ty, 'class': 'lv-muted' }, svg, 'most frequent top-1:');
      counts.slice(0, 6).forEach(function (c, i) {
        var cg = sv('g', { 'class': 'lv-zoomcount', 'data-token-id': c.id, 'data-count': c.count }, svg);
        sv('text', { x: cx + 16, y: ty + 14 * (i + 1) }, cg, label(c.text) + ' \u00d7' + c.count);
      });
      drawColorbar(s, barx, gy + 14, gh - 14);
    }
    function drawColorbar(s, x, y, h) {
      var id = 'lvgrad' + Math.floor(Math.random() * 1e9);
      var grad = sv('linearGradient', { id: id, x1: 0, y1: 1, x2: 0, y2: 0 }, sv('defs', {}, svg));
      var stops = PALETTES[s.palette];
      stops.forEach(function (c, i) { sv('stop', { offset: (i / (stops.length - 1) * 100) + '%', 'stop-color': c }, grad); });
      sv('rect', { x: x, y: y, width: 14, height: h, fill: 'url(#' + id + ')', 'class': 'lv-bar' }, svg);
      var ticks = [];
      if (s.log) { for (var v = 1; v <= s.hi; v *= 10) ticks.push([v, v >= 1000 ? '1e' + Math.round(Math.log10(v)) : String(v)]); }
      else for (var i = 0; i <= 5; i++) ticks.push([s.lo + i * (s.hi - s.lo) / 5, s.hi <= 1 ? (i / 5).toFixed(1) : String(i * 2)]);
      ticks.forEach(function (tk) {
        var ty = y + h - scaleT(s, tk[0]) * h;
        sv('path', { d: 'M' + (x + 14) + ' ' + ty + 'h3', 'class': 'lv-tick' }, svg);
        sv('text', { x: x + 19, y: ty + 3.4, 'class': 'lv-muted' }, svg, tk[1]);
      });
      if (s.clips) {
        sv('path', { d: 'M' + x + ' ' + y + 'L' + (x + 7) + ' ' + (y - 11) + 'L' + (x + 14) + ' ' + y + 'Z', fill: hex(paletteAt(s.palette, 1)), 'class': 'lv-bar' }, svg);
        sv('text', { x: x - 2, y: y - 15, 'class': 'lv-muted lv-small' }, svg, '>' + s.hi + ' clipped');
      }
      var tx = x + 62, ty = y + h / 2;
      sv('text', { x: tx, y: ty, transform: 'rotate(-90 ' + tx + ' ' + ty + ')', 'text-anchor': 'middle', 'class': 'lv-bartitle' }, svg, s.title);
    }
    function top1Counts(pos) {
      var out = [], byId = {};
      for (var r = 0; r < rows; r++) {
        var t = grid.topk[r][pos][0];
        if (!t) continue;
        if (byId[t.id]) { byId[t.id].count++; byId[t.id].last = r; }
        else { byId[t.id] = { id: t.id, text: t.text, count: 1, last: r }; out.push(byId[t.id]); }
      }
      return out.sort(function (a, b) { return b.count - a.count || b.last - a.last; });
    }

    function getState() {
      return { stat: state.stat, window: [state.win[0], state.win[1]], zoom: state.zoom };
    }
    /* Run a state change; tell options.onChange if it changed anything. */
    function change(f) {
      if (destroyed) return;
      var before = JSON.stringify(getState());
      f();
      var now = getState();
      if (options.onChange && JSON.stringify(now) !== before) options.onChange(now);
    }

    var view = {
      grid: grid,
      element: box,
      setStat: function (stat) {
        change(function () {
          if (!STATS[stat] || (/^target/.test(stat) && !target(grid))) return;
          state.stat = stat; sel.value = stat; drawOverview(); drawMain();
        });
      },
      setWindow: function (s, e) {
        change(function () {
          s = Math.max(0, Math.min(n - 1, s | 0)); e = Math.max(s + 1, Math.min(n, e | 0));
          state.win = [s, e];
          if (state.zoom < s || state.zoom >= e) state.zoom = defaultZoom(grid, state.win);
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

  global.LensView = {
    mount: mount,
    paletteAt: paletteAt,
    label: label,
    display: display,
    textColor: textColor
  };
})(typeof window !== 'undefined' ? window : this);
