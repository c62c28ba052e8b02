// The job page's live parts: charts (uPlot) and the log tail, fed from the event stream.
//
// One SSE connection per page: htmx-ext-sse opens it on #job-live (sse-connect). Elements
// inside with hx-trigger="sse:<type>" make the extension fire `htmx:sseMessage` (detail: the
// MessageEvent, its .type the event type) which bubbles up to #job-live, where this file
// listens. The status card and the action bar are htmx's (templates/job.html,
// _job_actions.html): the buttons post and the server answers with the card.
//
// Three stores feed the charts, each first filled from the database (so a finished job draws
// the same) and then extended by the stream: metrics by step, progress (tokens/s) by step,
// memory samples by seconds since the job started.
(function () {
  'use strict';

  const live = document.getElementById('job-live');
  if (!live || !window.uPlot || !window.ProspectCharts) return;
  const jobId = live.dataset.jobId;
  const api = '/api/jobs/' + jobId;
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

  const PC = window.ProspectCharts;
  const stores = { metrics: new PC.Store(), progress: new PC.Store(), memory: new PC.Store() };
  const started = parseFloat(live.dataset.started);
  let t0 = isNaN(started) ? null : started; // memory x: seconds since the job started

  // A job on several processes: rank 0's memory events carry every rank's numbers
  // (backend.ranks); each becomes a column rank<r>_active, as the series API answers.
  const rankHosts = {};
  function noteRank(rank, host) {
    if (Number.isInteger(rank) && rank >= 0 && !(rank in rankHosts)) rankHosts[rank] = host || '';
  }
  function rankLabel(rank) {
    const hosts = Object.keys(rankHosts).map(function (r) { return rankHosts[r]; });
    const several = hosts.some(function (h) { return h !== hosts[0]; }); // Macs, not GPUs
    const host = rankHosts[rank];
    return (backendName === 'cuda' ? 'GPU rank ' : 'rank ') + rank +
      (several && host ? ' (' + host + ')' : '');
  }
  function memoryValues(ev) {
    const b = ev.backend || {};
    const s = ev.system || {};
    const gib = function (v) { return typeof v === 'number' ? v / GiB : null; };
    const values = { rss: gib(ev.rss_bytes), backend_active: gib(b.active_bytes),
      backend_driver: gib(b.driver_bytes), system_used: gib(s.used),
      system_available: gib(s.available), swap_used: gib(s.swap_used),
      system_total: gib(s.total) };
    (Array.isArray(b.ranks) ? b.ranks : []).forEach(function (r) {
      if (!r || !Number.isInteger(r.rank) || r.rank < 0) return;
      noteRank(r.rank, r.host);
      values['rank' + r.rank + '_active'] = gib(r.active_bytes);
    });
    return values;
  }
  let backendName = null;
  function addMemory(seq, t, values) {
    const st = stores.memory;
    if (seq <= st.lastSeq) return;
    st.lastSeq = seq;
    if (t0 == null) { t0 = t; markRestarts(); }
    st.add(Math.max(0, t - t0), values);
  }

  const charts = {};
  ['loss', 'rewards', 'eval', 'lr', 'tps', 'mem'].forEach(function (k) {
    if (document.getElementById('chart-' + k)) {
      charts[k] = new PC.Chart(k, stores, function () { return backendName; }, rankLabel);
    }
  });
  function eachChart(fn) { Object.keys(charts).forEach(function (k) { fn(charts[k]); }); }

  function lastOf(col) {
    for (let i = col ? col.length - 1 : -1; i >= 0; i--) if (col[i] != null) return col[i];
    return null;
  }
  function setText(id, text) {
    const el = document.getElementById(id);
    if (el && el.textContent !== text) el.textContent = text;
  }
  function notes() {
    const m = stores.metrics;
    const n = m.x.length;
    setText('loss-note', n ? 'step ' + m.x[n - 1] + ' · ' + n + ' points' : '');
    const tps = lastOf(stores.progress.cols.tokens_per_s);
    setText('tps-note', tps != null ? Math.round(tps).toLocaleString() + ' tokens/s now' : '');
    const mc = stores.memory.cols;
    const used = lastOf(mc.system_used);
    const total = lastOf(mc.system_total);
    let peak = null; // a loop, not Math.max.apply: a day-long run has more samples than args
    (mc.rss || []).forEach(function (v) { if (v != null && (peak == null || v > peak)) peak = v; });
    if (memFit.auto && peak != null && total) { // small jobs start scaled to the process
      memFit.auto = false;
      if (peak < total / 4 && !memFit.box.checked) { memFit.box.checked = true; applyMemFit(); }
    }
    const parts = [];
    if (peak != null) parts.push('process peak ' + PC.fmtGiB(peak));
    if (total && memFit.box.checked) parts.push('machine total ' + PC.fmtGiB(total));
    if (used != null && total) parts.push('system ' + Math.round(100 * used / total) + '% used');
    setText('mem-note', parts.join(' · '));
  }

  // The memory chart's "scale to the process": only the process's own series are drawn, so
  // the y axis fits them; the machine's total moves to the note above the chart. Until the
  // person touches the box, the first samples decide (auto).
  const PROCESS_SERIES = ['rss', 'backend_active', 'backend_driver'];
  const memFit = { box: document.getElementById('mem-fit'), auto: true };
  function applyMemFit() {
    const c = charts.mem;
    if (!c) return;
    c.only = memFit.box.checked ? PROCESS_SERIES : null;
    c.draw();
    notes();
  }
  if (memFit.box) {
    memFit.box.addEventListener('change', function () { memFit.auto = false; applyMemFit(); });
  } else {
    memFit.box = { checked: false };
    memFit.auto = false;
  }

  // A resumed run: a dashed "resumed" line where each later worker started (by step on the
  // training charts, by time on the memory chart), from the stored status events.
  let restarts = [];
  try { restarts = JSON.parse(live.dataset.restarts || '[]'); } catch (e) { restarts = []; }
  function markRestarts() {
    eachChart(function (c) {
      const marks = restarts.map(function (r) {
        const x = c.source === 'memory' ? (t0 == null ? null : r.t - t0) : r.step;
        return x == null ? null : { x: x, label: 'resumed' };
      }).filter(Boolean);
      c.marks.splice(0, c.marks.length, ...marks);
    });
  }
  markRestarts();

  // Only the charts whose store changed are drawn again, once per animation frame.
  let frame = 0;
  const dirty = {};
  function redraw(source) {
    dirty[source] = true;
    if (frame) return;
    frame = requestAnimationFrame(function () {
      frame = 0;
      eachChart(function (c) { if (dirty[c.source]) c.draw(); });
      Object.keys(dirty).forEach(function (k) { delete dirty[k]; });
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
  // Each store draws as soon as its own fetch lands (a long run's metrics take longest);
  // stream events for a store wait until then, so nothing is drawn twice or out of order.
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
  function fillMemory(c) {
    backendName = c.backend_name || null;
    (c.ranks || []).forEach(function (r) { noteRank(r.rank, r.host); });
    const gib = {};
    Object.keys(c).forEach(function (k) {
      if (['seq', 't', 'elapsed_s', 'backend_name', 'backend_peak', 'ranks'].indexOf(k) < 0) {
        gib[k] = c[k].map(function (v) { return v == null ? null : v / GiB; });
      }
    });
    c.seq.forEach(function (seq, i) {
      const values = {};
      Object.keys(gib).forEach(function (k) { values[k] = gib[k][i]; });
      addMemory(seq, c.t[i], values);
    });
  }
  function load(source, url, apply) {
    const store = stores[source];
    store.ready = false;
    store.pending = [];
    return getJSON(url).then(function (c) { if (c) apply(c); })
      .catch(function (err) { console.warn(source + ' fetch failed', err); })
      .finally(function () {
        store.ready = true;
        store.pending.splice(0).forEach(onEvent);
        redraw(source);
      });
  }
  function metricNames() {
    const names = [];
    eachChart(function (c) {
      if (c.source === 'metrics') c.wanted.forEach(function (n) { names.push(n); });
    });
    return names;
  }
  function loadAll() {
    return Promise.all([
      // Only the names the charts draw: a TRL run logs twice as many, each a row per step.
      load('metrics', api + '/metrics?max_points=' + MAX_POINTS + '&names=' +
        encodeURIComponent(metricNames().join(',')), function (c) {
        fill(stores.metrics, c.step, c, ['step']);
      }),
      load('progress', api + '/series/progress?max_points=' + MAX_POINTS, function (c) {
        fill(stores.progress, c.step, c, ['step', 'seq', 't', 'eta_s']);
      }),
      load('memory', api + '/series/memory?max_points=' + MAX_POINTS, fillMemory),
    ]);
  }
  const loaded = loadAll();

  const SOURCES = { metric: 'metrics', progress: 'progress', memory: 'memory' };
  function onEvent(msg) {
    const source = SOURCES[msg.type];
    if (!source) return;
    const store = stores[source];
    if (!store.ready) { store.pending.push(msg); return; }
    const ev = msg.ev;
    if (source === 'metrics') store.add(ev.step, ev.values || {});
    else if (source === 'progress') store.add(ev.step, { tokens_per_s: ev.tokens_per_s });
    else {
      if (ev.backend && ev.backend.name && !backendName) backendName = ev.backend.name;
      addMemory(ev.seq, ev.t, memoryValues(ev));
    }
    redraw(source);
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
  let ended = false; // the stream was stopped: a later final card reads nothing again
  live.addEventListener('htmx:afterSwap', function (evt) {
    if (evt.target.id !== 'job-card') return;
    if (evt.target.querySelector('[data-final="true"]')) {
      // A job that ended while the stream was down (the server restarted) is final in the
      // database before the stream comes back: read what the stream missed from there. The
      // stores keep what they have (an older or equal step adds nothing twice).
      if (sources.length && !ended) loadAll();
      ended = true;
      stopStream();
      scheduleLog();
      if (window.htmx) htmx.trigger('#job-artifacts', 'refresh');
      if (window.htmx && document.getElementById('job-fused')) htmx.trigger('#job-fused', 'refresh');
    }
  });

  refreshLog();
  window.prospectJob = { charts: charts, stores: stores, store: stores.metrics,
    refreshLog: refreshLog, loaded: loaded };
})();
