// The job page's live parts: loss and reward charts (uPlot), the log tail, memory note.
//
// One SSE connection per page: htmx-ext-sse opens it on #job-live (sse-connect). Elements
// inside with hx-trigger="sse:<type>" make the extension fire `htmx:sseMessage` (detail: the
// MessageEvent, its .type the event type) which bubbles up to #job-live, where this file
// listens. The status card refreshes itself through htmx (see templates/job.html).
(function () {
  'use strict';

  const live = document.getElementById('job-live');
  if (!live || !window.uPlot) return;
  const jobId = live.dataset.jobId;
  const api = '/api/jobs/' + jobId;
  const CHART_HEIGHT = 240;
  const LOG_LINES = 200;

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

  // --- metrics: one step-aligned store, charts draw the columns they want ------------------
  const store = { step: [], cols: {} };
  let ready = false; // the first fetch has landed; stream points wait for it
  const pending = [];

  function addPoint(step, values) {
    const n = store.step.length;
    const last = n ? store.step[n - 1] : -Infinity;
    if (step < last) return; // already drawn: the first fetch and the stream overlap
    if (step > last) {
      store.step.push(step);
      Object.keys(store.cols).forEach(function (k) { store.cols[k].push(null); });
    }
    const i = store.step.length - 1;
    Object.keys(values).forEach(function (name) {
      const v = values[name];
      if (!store.cols[name]) store.cols[name] = new Array(store.step.length).fill(null);
      if (store.cols[name][i] == null && typeof v === 'number' && isFinite(v)) {
        store.cols[name][i] = v;
      }
    });
  }

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
  function axisSize(u, values) {
    const longest = (values || []).reduce(function (m, v) { return Math.max(m, v.length); }, 3);
    return Math.ceil(longest * 7.5) + 18;
  }

  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000,
    1e4, 2e4, 2.5e4, 5e4, 1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7]; // steps are whole

  function Chart(key) {
    this.el = document.getElementById('chart-' + key);
    this.empty = document.getElementById('chart-' + key + '-empty');
    this.wanted = this.el.dataset.series.split(',');
    this.names = [];
    this.plot = null;
  }

  Chart.prototype.present = function () {
    return this.wanted.filter(function (name) {
      const col = store.cols[name];
      return col && col.some(function (v) { return v != null; });
    });
  };

  Chart.prototype.build = function (names) {
    if (this.plot) this.plot.destroy();
    const axis = {
      stroke: css('--muted'),
      grid: { stroke: css('--grid'), width: 1 },
      ticks: { stroke: css('--grid'), width: 1 },
      font: '12px ' + css('--font-mono'),
    };
    const palette = [css('--c1'), css('--c2'), css('--c3'), css('--c4')];
    this.names = names;
    this.plot = new uPlot({
      width: Math.max(200, this.el.clientWidth),
      height: CHART_HEIGHT,
      scales: { x: { time: false } },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: 'step', value: function (u, v) { return v == null ? '--' : v; } }]
        .concat(names.map(function (name, i) {
          return { label: name, stroke: palette[i % palette.length], width: 2, spanGaps: true,
            points: { size: 5 }, value: pointValue };
        })),
      axes: [Object.assign({ label: 'step', labelSize: 20, incrs: STEP_INCRS }, axis),
        Object.assign({ size: axisSize, values: tickValues }, axis)],
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
    return [store.step].concat(this.names.map(function (n) { return store.cols[n]; }));
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

  const charts = { loss: new Chart('loss'), rewards: new Chart('rewards') };
  let frame = 0;
  function redraw() {
    if (frame) return;
    frame = requestAnimationFrame(function () {
      frame = 0;
      Object.keys(charts).forEach(function (k) { charts[k].draw(); });
      const n = store.step.length;
      document.getElementById('loss-note').textContent =
        n ? 'step ' + store.step[n - 1] + ' · ' + n + ' points' : '';
    });
  }

  function rebuildAll() {
    Object.keys(charts).forEach(function (k) {
      const c = charts[k];
      if (c.plot) c.build(c.names);
    });
  }

  if (window.ResizeObserver) {
    const ro = new ResizeObserver(function () {
      Object.keys(charts).forEach(function (k) { charts[k].resize(); });
    });
    Object.keys(charts).forEach(function (k) { ro.observe(charts[k].el); });
  }
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', rebuildAll);

  function onMetric(ev) {
    if (!ready) { pending.push(ev); return; }
    addPoint(ev.step, ev.values || {});
    redraw();
  }

  fetch(api + '/metrics?max_points=5000', { headers: { Accept: 'application/json' } })
    .then(function (r) { return r.ok ? r.json() : { step: [] }; })
    .then(function (cols) {
      const steps = cols.step || [];
      const names = Object.keys(cols).filter(function (k) { return k !== 'step'; });
      steps.forEach(function (step, i) {
        const values = {};
        names.forEach(function (n) { values[n] = cols[n][i]; });
        addPoint(step, values);
      });
    })
    .catch(function (err) { console.warn('metrics fetch failed', err); })
    .finally(function () {
      ready = true;
      pending.splice(0).forEach(function (ev) { addPoint(ev.step, ev.values || {}); });
      redraw();
    });

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
        if (logEl.textContent !== shown) logEl.textContent = shown;
        if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
      })
      .catch(function (err) { console.warn('log fetch failed', err); });
  }
  const scheduleLog = throttle(refreshLog, 1000);
  follow.addEventListener('change', function () {
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  });

  // --- memory: the latest sample, beside the rewards chart ----------------------------------
  function gb(n) { return n == null ? null : (n / 1073741824).toFixed(2) + ' GB'; }
  function onMemory(ev) {
    const parts = [];
    if (ev.rss_bytes != null) parts.push('process ' + gb(ev.rss_bytes));
    const b = ev.backend || {};
    if (b.name && b.peak_bytes != null) parts.push(b.name + ' peak ' + gb(b.peak_bytes));
    const s = ev.system || {};
    if (s.available != null) parts.push(gb(s.available) + ' free');
    const note = document.getElementById('mem-note');
    note.textContent = parts.length ? 'memory: ' + parts.join(' · ') : '';
  }

  // --- wiring --------------------------------------------------------------------------------
  live.addEventListener('htmx:sseMessage', function (evt) {
    const msg = evt.detail;
    if (!msg || typeof msg.data !== 'string') return;
    scheduleLog();
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (msg.type === 'metric') onMetric(ev);
    else if (msg.type === 'memory') onMemory(ev);
    else if (msg.type === 'done') setTimeout(refreshLog, 1500); // the worker's last lines
  });

  // A stream that fails (the worker died without events, the server restarted) asks the
  // card to look at the database; a card that shows a final status ends the stream.
  const refreshCard = throttle(function () { htmx.trigger('#job-card', 'refresh'); }, 2000);
  live.addEventListener('htmx:sseError', refreshCard);
  live.addEventListener('htmx:afterSwap', function (evt) {
    if (evt.target.id !== 'job-card') return;
    if (evt.target.querySelector('[data-final="true"]')) {
      stopStream();
      scheduleLog();
    }
  });

  refreshLog();
  window.prospectJob = { charts: charts, store: store, refreshLog: refreshLog };
})();
