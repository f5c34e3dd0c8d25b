/* app.js: the `lensmap serve` page. The grid itself is drawn by lensview.js
 * (LensView.mount), the same script as the HTML output of `lensmap run`.
 *
 * URL parameters fill the form, so a link reproduces a view (and headless
 * browsers can drive the page without typing):
 *   prompt, system, raw=1, dummy, dummy_text, generate, top_k, target, model,
 *   stat, window=START..END, zoom=POS,
 *   autorun=1            submit once the model list has loaded,
 *   hover=ROW,POS        after the grid is drawn, hover that cell (negative
 *                        or `output` count from the end) to show its top-k.
 * <body data-state> is idle, running, done or error; data-js-error holds the
 * last uncaught script error, if any.
 */
(function () {
  'use strict';

  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(window.location.search);
  var form = $('lens-form'), statusEl = $('status'), gridEl = $('grid');
  var view = null, lastText = null, lastGrid = null, firstRun = true, timer = null;
  // Uncaught script errors, for tests and bug reports: <body data-js-error>.
  window.addEventListener('error', function (e) {
    document.body.setAttribute('data-js-error', String(e.message));
  });

  function setState(s) { document.body.setAttribute('data-state', s); }
  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = 'status' + (cls ? ' ' + cls : '');
  }
  function errorText(resp, text) {
    try {
      var j = JSON.parse(text);
      if (j && j.error) return j.error;
    } catch (e) { /* not JSON */ }
    return resp.status + ' ' + resp.statusText;
  }
  function setDownloads(on) {
    ['dl-svg', 'dl-png', 'dl-json'].forEach(function (id) { $(id).disabled = !on; });
  }

  // ---- form <-> URL ------------------------------------------------------
  function fillFromParams() {
    var set = function (name, id) { if (params.has(name)) $(id || name).value = params.get(name); };
    set('prompt'); set('system'); set('dummy'); set('dummy_text'); set('generate'); set('top_k'); set('target');
    if (params.has('raw')) $('template').checked = !/^(1|true|yes)$/i.test(params.get('raw'));
    if (params.has('model')) {
      var m = params.get('model'), sel = $('model');
      for (var i = 0; i < sel.options.length; i++) if (sel.options[i].value === m) sel.value = m;
    }
  }
  function intField(id) {
    var v = $(id).value.trim();
    return v === '' ? undefined : Number(v);
  }
  function requestBody() {
    var body = {
      model: $('model').value || undefined,
      prompt: $('prompt').value,
      raw: !$('template').checked,
      dummy: intField('dummy') || 0,
      generate: intField('generate') || 0,
      top_k: intField('top_k')
    };
    var system = $('system').value, target = $('target').value, dt = $('dummy_text').value;
    if (system.trim()) body.system = system;
    if (target.trim()) body.target = target;
    if (dt !== '') body.dummy_text = dt;
    return body;
  }

  // ---- models and health -------------------------------------------------
  function loadModels() {
    return fetch('/api/models').then(function (r) { return r.json(); }).then(function (info) {
      var sel = $('model');
      sel.innerHTML = '';
      info.models.forEach(function (m) {
        var o = document.createElement('option');
        o.value = m.name;
        o.textContent = m.name + '  (' + m.arch + ', ' + m.layers + ' layers)';
        o.title = 'vocab ' + m.vocab + ', context ' + m.context + ', prompts up to ' + m.max_tokens + ' tokens';
        sel.appendChild(o);
      });
      var l = info.limits || {};
      if (l.max_dummy) $('dummy').max = l.max_dummy;
      if (l.max_generate) $('generate').max = l.max_generate;
      if (l.top_k) { $('top_k').min = l.top_k[0]; $('top_k').max = l.top_k[1]; }
    });
  }
  function loadHealth() {
    fetch('/api/health').then(function (r) { return r.json(); }).then(function (h) {
      $('health').textContent = h.workers + ' worker' + (h.workers === 1 ? '' : 's') + ' \u00b7 queue ' + h.queue;
    }).catch(function () {});
  }

  // ---- running -----------------------------------------------------------
  function subtitle(grid) {
    var text = grid.tokens.filter(function (t) { return t.kind === 'text'; })
      .map(function (t) { return t.text; }).join('').trim() || grid.prompt_text;
    var dummies = grid.tokens.filter(function (t) { return t.kind === 'dummy'; }).length;
    var line1 = 'model: ' + grid.model.file + ' \u00b7 prompt: \u201c' + text + '\u201d' +
      (dummies ? ' + ' + dummies + ' dummy tokens' : '');
    var lines = [line1];
    if (grid.answer) lines.push('greedy answer: \u201c' + grid.answer.text + '\u201d');
    return lines;
  }

  function run() {
    var body = requestBody();
    if (!body.prompt.trim()) { setStatus('Type a prompt first.', 'error'); return; }
    $('run').disabled = true;
    setState('running');
    var t0 = performance.now();
    var tick = function () {
      setStatus('running the lens on ' + (body.model || 'the model') + '\u2026 ' +
        ((performance.now() - t0) / 1000).toFixed(1) + ' s', 'busy');
    };
    tick();
    clearInterval(timer);
    timer = setInterval(tick, 200);
    fetch('/api/lens', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.text().then(function (text) { return { resp: resp, text: text }; });
    }).then(function (r) {
      clearInterval(timer);
      $('run').disabled = false;
      if (!r.resp.ok) {
        setState('error');
        setStatus(errorText(r.resp, r.text), 'error');
        return;
      }
      lastText = r.text;
      lastGrid = JSON.parse(r.text);
      // The server's own timing (Server-Timing: queue;dur=MS, compute;dur=MS).
      var st = r.resp.headers.get('Server-Timing') || '', m = /compute;dur=([\d.]+)/.exec(st);
      var q = /queue;dur=([\d.]+)/.exec(st);
      var secs = m ? (+m[1] / 1000) : (performance.now() - t0) / 1000;
      return show(lastGrid).then(function () {
        setStatus(lastGrid.model.file + ': ' + lastGrid.tokens.length + ' positions \u00d7 ' + lastGrid.n_rows +
          ' rows, computed in ' + secs.toFixed(2) + ' s' + (q && +q[1] > 50 ? ' after ' + (+q[1] / 1000).toFixed(1) + ' s in the queue' : ''));
        setDownloads(true);
        setState('done');
      });
    }).catch(function (e) {
      clearInterval(timer);
      $('run').disabled = false;
      setState('error');
      setStatus('request failed: ' + e, 'error');
    });
  }

  /* Draw a grid: ask the server for its view (POST /api/view: palettes,
   * scales, labels, window and zoom resolved by lensmap), then mount it. */
  function show(grid) {
    var q = new URLSearchParams();
    if (view) q.set('stat', view.getState().stat);
    else if (params.has('stat')) q.set('stat', params.get('stat'));
    if (firstRun) {
      var w = params.get('window');
      var m = w && /^(\d+)\s*(?:\.\.|,)\s*(\d+)$/.exec(w);
      if (m) q.set('window', m[1] + '..' + m[2]);
      if (params.has('zoom')) {
        var z = parseInt(params.get('zoom'), 10);
        if (z < 0) z += grid.tokens.length;
        if (z >= 0) q.set('zoom', z);
      }
    }
    var first = firstRun;
    firstRun = false;
    var ask = function (query) {
      return fetch('/api/view?' + query.toString(), {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: lastText
      });
    };
    // A statistic, window or zoom this grid cannot show: its default view instead.
    return ask(q).then(function (resp) {
      return resp.ok ? resp : ask(new URLSearchParams());
    }).then(function (resp) {
      if (!resp.ok) return resp.text().then(function (t) { throw new Error(errorText(resp, t)); });
      return resp.json();
    }).then(function (spec) {
      spec.subtitle = subtitle(grid);
      // The previous view's tooltip lives in <body>: destroy() takes it along,
      // or a shown one would stay forever.
      if (view) view.destroy();
      view = LensView.mount(gridEl, grid, spec);
      if (first && params.has('hover')) hover(params.get('hover'));
    });
  }

  /* Hover a cell as a user would: a real mouseover at its centre. */
  function hover(spec) {
    var parts = spec.split(',');
    var rows = view.grid.n_rows, n = view.grid.tokens.length;
    var r = parts[0] === 'output' ? rows - 1 : parseInt(parts[0], 10);
    var p = parts[1] === 'last' ? n - 1 : parseInt(parts[1], 10);
    if (r < 0) r += rows;
    if (p < 0) p += n;
    if (!(r >= 0 && r < rows && p >= 0 && p < n)) return;
    var win = view.getState().window;
    if (p < win[0] || p >= win[1]) {
      var w = win[1] - win[0], s = Math.max(0, Math.min(n - w, p - (w >> 1)));
      view.setWindow(s, s + w);
    }
    var cell = gridEl.querySelector('rect.lv-cell[data-row="' + r + '"][data-pos="' + p + '"]');
    if (!cell) return;
    var b = cell.getBoundingClientRect();
    cell.dispatchEvent(new MouseEvent('mouseover', {
      bubbles: true, view: window, clientX: b.left + b.width / 2, clientY: b.top + b.height / 2
    }));
  }

  // ---- downloads ---------------------------------------------------------
  function fileBase() {
    var g = lastGrid;
    var words = g.tokens.filter(function (t) { return t.kind === 'text'; }).map(function (t) { return t.text; })
      .join('').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40);
    return 'lensmap-' + g.model.file.replace(/\.gguf$/i, '').replace(/[^A-Za-z0-9._-]+/g, '_') + (words ? '-' + words : '');
  }
  function save(blob, name) {
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function download(format) {
    if (!lastText) return;
    if (format === 'json') { save(new Blob([lastText], { type: 'application/json' }), fileBase() + '.json'); return; }
    var st = view.getState();
    var q = new URLSearchParams({ format: format, stat: st.stat, window: st.window[0] + '..' + st.window[1], zoom: st.zoom });
    var btn = $('dl-' + format);
    btn.disabled = true;
    fetch('/api/render?' + q.toString(), {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: lastText
    }).then(function (resp) {
      if (!resp.ok) return resp.text().then(function (t) { throw new Error(errorText(resp, t)); });
      return resp.blob();
    }).then(function (blob) {
      save(blob, fileBase() + '.' + format);
    }).catch(function (e) {
      setStatus('download failed: ' + e.message, 'error');
    }).then(function () { btn.disabled = false; });
  }

  // ---- wiring ------------------------------------------------------------
  form.addEventListener('submit', function (e) { e.preventDefault(); run(); });
  form.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $('dl-svg').addEventListener('click', function () { download('svg'); });
  $('dl-png').addEventListener('click', function () { download('png'); });
  $('dl-json').addEventListener('click', function () { download('json'); });

  setState('idle');
  loadHealth();
  loadModels().then(function () {
    fillFromParams();
    if (/^(1|true|yes)$/i.test(params.get('autorun') || '')) run();
  }).catch(function (e) {
    setState('error');
    setStatus('cannot list models: ' + e, 'error');
  });
})();
