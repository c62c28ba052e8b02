// The job page's live parts: charts (uPlot), the log tail and the action buttons.
//
// One SSE connection per page: htmx-ext-sse opens it on #job-live (sse-connect). Elements
// inside with hx-trigger="sse:<type>" make the extension fire `htmx:sseMessage` (detail: the
// MessageEvent, its .type the event type) which bubbles up to #job-live, where this file
// listens. The status card refreshes itself through htmx (see templates/job.html).
//
// Three stores feed the charts, each first filled from the database (so a finished job draws
// the same) and then extended by the stream: metrics by step, progress (tokens/s) by step,
// memory samples by seconds since the job started.
(function () {
  'use strict';

  const live = document.getElementById('job-live');
  if (!live || !window.uPlot) return;
  const jobId = live.dataset.jobId;
  const api = '/api/jobs/' + jobId;
  const CHART_HEIGHT = 240;
  const LOG_LINES = 200;
  const MAX_POINTS = 4000; // per store from the server; it keeps each bucket's peaks
  const GiB = 1073741824;

  // --- the stream: remember what the extension opens so a finished job can close it ------
  const sources = [];
  if (window.htmx && htmx.createEventSource) {
    const create = htmx.createEventSource;
    htmx.createEventSource = function (url) {
      const source = create(url);
      sources.push(source);
      return source;
    };
  }
  function stopStream() {
    live.removeAttribute('sse-connect'); // the extension's reconnect looks for it
    sources.forEach(function (s) { s.close(); });
  }

  function throttle(fn, ms) {
    let last = 0;
    let timer = null;
    return function () {
      if (timer) return; // the pending run happens after this call: nothing is lost
      timer = setTimeout(function () {
        timer = null;
        last = Date.now();
        fn();
      }, Math.max(0, last + ms - Date.now()));
    };
  }

  // --- stores: an x column and named y columns of the same length --------------------------
  function Store() { this.x = []; this.cols = {}; this.lastSeq = 0; }

  // A point at x; x never goes back (the first fetch and the stream overlap, and a resumed
  // run logs its last steps again): an older x is dropped, the same x fills gaps.
  Store.prototype.add = function (x, values) {
    const n = this.x.length;
    const last = n ? this.x[n - 1] : -Infinity;
    if (x < last) return;
    const cols = this.cols;
    if (x > last) {
      this.x.push(x);
      Object.keys(cols).forEach(function (k) { cols[k].push(null); });
    }
    const i = this.x.length - 1;
    const len = this.x.length;
    Object.keys(values).forEach(function (name) {
      const v = values[name];
      if (!cols[name]) cols[name] = new Array(len).fill(null);
      if (cols[name][i] == null && typeof v === 'number' && isFinite(v)) cols[name][i] = v;
    });
  };

  const stores = { metrics: new Store(), progress: new Store(), memory: new Store() };
  const started = parseFloat(live.dataset.started);
  let t0 = isNaN(started) ? null : started; // memory x: seconds since the job started

  function memoryValues(ev) {
    const b = ev.backend || {};
    const s = ev.system || {};
    const gib = function (v) { return typeof v === 'number' ? v / GiB : null; };
    return { rss: gib(ev.rss_bytes), backend_active: gib(b.active_bytes),
      backend_driver: gib(b.driver_bytes), system_used: gib(s.used),
      system_available: gib(s.available), swap_used: gib(s.swap_used),
      system_total: gib(s.total) };
  }
  let backendName = null;
  function addMemory(seq, t, values) {
    const st = stores.memory;
    if (seq <= st.lastSeq) return;
    st.lastSeq = seq;
    if (t0 == null) t0 = t;
    st.add(Math.max(0, t - t0), values);
  }

  // --- formatting -----------------------------------------------------------------------------
  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  // uPlot's default number format keeps 3 decimals: a loss moving 0.4999 -> 0.4995 would
  // read 0.5 on every tick. Ticks get the decimals their spacing needs, values 4 digits.
  function tickValues(u, splits, axisIdx, space, incr) {
    const dec = Math.max(0, Math.min(10, Math.ceil(-Math.log10(incr) - 1e-9)));
    return splits.map(function (v) {
      if (v == null) return '';
      if (Math.abs(v) >= 1e6 || dec > 6) return v === 0 ? '0' : v.toExponential(1);
      return v.toFixed(dec);
    });
  }
  function pointValue(u, v) {
    if (v == null) return '--';
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e6 || a < 1e-3) ? v.toExponential(3) : String(+v.toPrecision(4));
  }
  function gbValue(u, v) { return v == null ? '--' : v.toFixed(2) + ' GB'; }
  function clock(s) {
    s = Math.round(s);
    const h = Math.floor(s / 3600);
    const m = Math.floor(s % 3600 / 60);
    const pad = function (n) { return String(n).padStart(2, '0'); };
    return h ? h + ':' + pad(m) + ':' + pad(s % 60) : m + ':' + pad(s % 60);
  }
  function axisSize(u, values) {
    const longest = (values || []).reduce(function (m, v) { return Math.max(m, v.length); }, 3);
    return Math.ceil(longest * 7.5) + 18;
  }
  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000,
    1e4, 2e4, 2.5e4, 5e4, 1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7]; // steps are whole
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400];
  // One colour per quantity (not per position), so "available" never looks like the limit.
  const MEMORY_COLORS = { rss: '--c1', backend_active: '--c2', backend_driver: '--c6',
    system_used: '--c4', system_available: '--c5', swap_used: '--c3' };
  const MEMORY_LABELS = { rss: 'process', backend_active: 'allocator', backend_driver: 'driver',
    system_used: 'system used', system_available: 'available', swap_used: 'swap',
    system_total: 'total' };

  // --- charts ---------------------------------------------------------------------------------
  function Chart(key) {
    this.key = key;
    this.el = document.getElementById('chart-' + key);
    this.empty = document.getElementById('chart-' + key + '-empty');
    this.source = this.el.dataset.source || 'metrics';
    this.store = stores[this.source];
    this.wanted = this.el.dataset.series.split(',');
    this.names = [];
    this.plot = null;
  }

  Chart.prototype.present = function () {
    const cols = this.store.cols;
    return this.wanted.filter(function (name) {
      const col = cols[name];
      return col && col.some(function (v) { return v != null; });
    });
  };

  Chart.prototype.seriesFor = function (name, i) {
    const palette = ['--c1', '--c2', '--c3', '--c4', '--c5', '--c6'].map(css);
    if (this.source !== 'memory') {
      return { label: name, stroke: palette[i % palette.length], width: 2, spanGaps: true,
        points: { size: 5 }, value: pointValue };
    }
    let label = MEMORY_LABELS[name] || name;
    if (backendName && name.indexOf('backend_') === 0) label = backendName + ' ' + label;
    if (name === 'system_total') {
      // The machine's limit: a flat dashed line the other series are read against.
      return { label: label, stroke: css('--danger'), width: 1.5, dash: [6, 4],
        points: { show: false }, value: gbValue };
    }
    return { label: label, stroke: css(MEMORY_COLORS[name] || '--c1'), width: 2,
      spanGaps: true, points: { show: false }, value: gbValue };
  };

  Chart.prototype.build = function (names) {
    if (this.plot) this.plot.destroy();
    const axis = {
      stroke: css('--muted'),
      grid: { stroke: css('--grid'), width: 1 },
      ticks: { stroke: css('--grid'), width: 1 },
      font: '12px ' + css('--font-mono'),
    };
    const self = this;
    const memory = this.source === 'memory';
    this.names = names;
    const xAxis = memory
      ? { label: 'time into the run (m:ss)', labelSize: 20, incrs: TIME_INCRS,
        values: function (u, splits) { return splits.map(clock); } }
      : { label: 'step', labelSize: 20, incrs: STEP_INCRS };
    this.plot = new uPlot({
      width: Math.max(200, this.el.clientWidth),
      height: CHART_HEIGHT,
      scales: { x: { time: false }, y: memory ? { range: function (u, min, max) {
        return [0, max > 0 ? max * 1.05 : 1]; } } : {} },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: memory ? 'time' : 'step',
        value: function (u, v) { return v == null ? '--' : (memory ? clock(v) : v); } }]
        .concat(names.map(function (name, i) { return self.seriesFor(name, i); })),
      axes: [Object.assign(xAxis, axis),
        Object.assign({ size: axisSize, values: memory
          ? function (u, splits) { return splits.map(function (v) { return v + ' GB'; }); }
          : tickValues }, axis)],
      hooks: { setLegend: [showLastWhenIdle] },
    }, this.data(), this.el);
    this.empty.hidden = true;
  };

  // Away from the cursor the legend shows the latest values rather than "--".
  let settingLegend = false;
  function showLastWhenIdle(u) {
    const n = u.data[0].length;
    if (settingLegend || u.cursor.idx != null || !n) return;
    settingLegend = true;
    u.setLegend({ idx: n - 1 });
    settingLegend = false;
  }

  Chart.prototype.data = function () {
    const cols = this.store.cols;
    return [this.store.x].concat(this.names.map(function (n) { return cols[n]; }));
  };

  Chart.prototype.draw = function () {
    const names = this.present();
    if (!names.length) return;
    if (!this.plot || names.join() !== this.names.join()) this.build(names);
    else this.plot.setData(this.data());
    showLastWhenIdle(this.plot);
  };

  Chart.prototype.resize = function () {
    if (this.plot) this.plot.setSize({ width: this.el.clientWidth, height: CHART_HEIGHT });
  };

  const charts = {};
  ['loss', 'rewards', 'lr', 'tps', 'mem'].forEach(function (k) {
    if (document.getElementById('chart-' + k)) charts[k] = new Chart(k);
  });
  function eachChart(fn) { Object.keys(charts).forEach(function (k) { fn(charts[k]); }); }

  function lastOf(col) {
    for (let i = col ? col.length - 1 : -1; i >= 0; i--) if (col[i] != null) return col[i];
    return null;
  }
  function notes() {
    const m = stores.metrics;
    const n = m.x.length;
    document.getElementById('loss-note').textContent =
      n ? 'step ' + m.x[n - 1] + ' · ' + n + ' points' : '';
    const tps = lastOf(stores.progress.cols.tokens_per_s);
    document.getElementById('tps-note').textContent =
      tps != null ? Math.round(tps).toLocaleString() + ' tokens/s now' : '';
    const mc = stores.memory.cols;
    const used = lastOf(mc.system_used);
    const total = lastOf(mc.system_total);
    const peak = mc.rss ? Math.max.apply(null, mc.rss.filter(function (v) { return v != null; })) : null;
    const parts = [];
    if (peak != null && isFinite(peak)) parts.push('process peak ' + peak.toFixed(2) + ' GB');
    if (used != null && total) parts.push('system ' + Math.round(100 * used / total) + '% used');
    document.getElementById('mem-note').textContent = parts.join(' · ');
  }

  let frame = 0;
  function redraw() {
    if (frame) return;
    frame = requestAnimationFrame(function () {
      frame = 0;
      eachChart(function (c) { c.draw(); });
      notes();
    });
  }

  if (window.ResizeObserver) {
    const ro = new ResizeObserver(function () { eachChart(function (c) { c.resize(); }); });
    eachChart(function (c) { ro.observe(c.el); });
  }
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', function () {
    eachChart(function (c) { if (c.plot) c.build(c.names); });
  });

  // --- first fill from the database, then the stream ------------------------------------------
  let ready = false; // the first fetches have landed; stream events wait for them
  const pending = [];

  function getJSON(url) {
    return fetch(url, { headers: { Accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.json() : null; });
  }
  function fill(store, xs, cols, skip) {
    const names = Object.keys(cols).filter(function (k) {
      return skip.indexOf(k) < 0 && Array.isArray(cols[k]);
    });
    (xs || []).forEach(function (x, i) {
      const values = {};
      names.forEach(function (n) { values[n] = cols[n][i]; });
      store.add(x, values);
    });
  }
  const loaded = Promise.all([
    getJSON(api + '/metrics?max_points=' + MAX_POINTS).then(function (c) {
      if (c) fill(stores.metrics, c.step, c, ['step']);
    }),
    getJSON(api + '/series/progress?max_points=' + MAX_POINTS).then(function (c) {
      if (c) fill(stores.progress, c.step, c, ['step', 'seq', 't', 'eta_s']);
    }),
    getJSON(api + '/series/memory?max_points=' + MAX_POINTS).then(function (c) {
      if (!c) return;
      backendName = c.backend_name || null;
      const gib = {};
      Object.keys(c).forEach(function (k) {
        if (['seq', 't', 'elapsed_s', 'backend_name', 'backend_peak'].indexOf(k) < 0) {
          gib[k] = c[k].map(function (v) { return v == null ? null : v / GiB; });
        }
      });
      c.seq.forEach(function (seq, i) {
        const values = {};
        Object.keys(gib).forEach(function (k) { values[k] = gib[k][i]; });
        addMemory(seq, c.t[i], values);
      });
    }),
  ]).catch(function (err) { console.warn('chart data fetch failed', err); })
    .finally(function () {
      ready = true;
      pending.splice(0).forEach(onEvent);
      redraw();
    });

  function onEvent(msg) {
    if (!ready) { pending.push(msg); return; }
    const ev = msg.ev;
    if (msg.type === 'metric') stores.metrics.add(ev.step, ev.values || {});
    else if (msg.type === 'progress') stores.progress.add(ev.step, { tokens_per_s: ev.tokens_per_s });
    else if (msg.type === 'memory') {
      if (ev.backend && ev.backend.name && !backendName) backendName = ev.backend.name;
      addMemory(ev.seq, ev.t, memoryValues(ev));
    } else return;
    redraw();
  }

  // --- the log tail ------------------------------------------------------------------------
  const logEl = document.getElementById('log-tail');
  const follow = document.getElementById('log-follow');

  function refreshLog() {
    return fetch(api + '/logs?offset=-16384')
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) return;
        let text = j.text;
        if (j.offset > 0) text = text.slice(text.indexOf('\n') + 1); // drop a partial line
        const lines = text.split('\n');
        if (lines.length && lines[lines.length - 1] === '') lines.pop();
        const shown = lines.slice(-LOG_LINES).join('\n') ||
          (j.size ? '' : 'The worker has not written to its log yet.');
        // Paused (follow off): the text stays still so a person can read and select it.
        if (!follow.checked && logEl.textContent !== '…') return;
        if (logEl.textContent !== shown) logEl.textContent = shown;
        if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
      })
      .catch(function (err) { console.warn('log fetch failed', err); });
  }
  const scheduleLog = throttle(refreshLog, 1000);
  follow.addEventListener('change', function () {
    if (follow.checked) refreshLog();
  });

  // --- actions: fetch with the CSRF header, then go where the action leads --------------------
  const actionsEl = document.getElementById('job-actions');
  const actionError = document.getElementById('action-error');
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';

  function showActions(can) {
    actionsEl.querySelectorAll('[data-action]').forEach(function (el) {
      el.hidden = can.indexOf(el.dataset.action) < 0;
    });
  }
  actionsEl.addEventListener('click', function (evt) {
    const btn = evt.target.closest('button[data-action]');
    if (!btn || btn.disabled) return;
    if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
    btn.disabled = true;
    actionError.hidden = true;
    fetch(btn.dataset.url, { method: btn.dataset.method,
      headers: { 'X-CSRF-Token': csrf, Accept: 'application/json' } })
      .then(function (r) {
        return r.text().then(function (text) {
          let body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!r.ok) {
            const d = body && body.detail;
            throw new Error(typeof d === 'string' ? d
              : Array.isArray(d) && d.length ? d[0].msg : r.status + ' ' + r.statusText);
          }
          return body;
        });
      })
      .then(function (body) {
        const go = btn.dataset.go;
        if (go === 'home') window.location.assign('/');
        else if (go === 'job' && body && body.id) window.location.assign('/jobs/' + body.id);
        else if (go === 'reload') window.location.reload();
        else { btn.disabled = false; htmx.trigger('#job-card', 'refresh'); }
      })
      .catch(function (err) {
        btn.disabled = false;
        actionError.textContent = btn.textContent.trim() + ' failed: ' + err.message;
        actionError.hidden = false;
      });
  });

  // --- wiring --------------------------------------------------------------------------------
  live.addEventListener('htmx:sseMessage', function (evt) {
    const msg = evt.detail;
    if (!msg || typeof msg.data !== 'string') return;
    scheduleLog();
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (msg.type === 'done') setTimeout(refreshLog, 1500); // the worker's last lines
    else onEvent({ type: msg.type, ev: ev });
  });

  // A stream that fails (the worker died without events, the server restarted) asks the
  // card to look at the database; a card that shows a final status ends the stream.
  const refreshCard = throttle(function () { htmx.trigger('#job-card', 'refresh'); }, 2000);
  live.addEventListener('htmx:sseError', refreshCard);
  live.addEventListener('htmx:afterSwap', function (evt) {
    if (evt.target.id !== 'job-card') return;
    const body = evt.target.querySelector('.card-body');
    if (body) showActions((body.dataset.can || '').split(' '));
    if (evt.target.querySelector('[data-final="true"]')) {
      stopStream();
      scheduleLog();
      if (window.htmx) htmx.trigger('#job-artifacts', 'refresh');
    }
  });

  refreshLog();
  window.prospectJob = { charts: charts, stores: stores, store: stores.metrics,
    refreshLog: refreshLog, loaded: loaded };
})();
