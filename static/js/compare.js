// The compare page's chart: one metric of several runs on one uPlot chart, aligned by step.
//
// Series come from GET /api/compare (each run downsampled on the server, peaks kept); the
// steps of all runs are merged so each run is one column, null where it logged nothing.
(function () {
  'use strict';

  const el = document.getElementById('compare-chart');
  if (!el || !window.uPlot || !window.ProspectCharts) return;
  const empty = document.getElementById('compare-empty');
  const select = document.getElementById('compare-metric');
  const ids = el.dataset.ids;
  const HEIGHT = 340;
  const MAX_POINTS = 2000;
  let plot = null;
  let current = null; // {metric, runs, data}

  const PC = window.ProspectCharts; // formatting and theming shared with the job page
  const css = PC.css;
  function palette() {
    const named = ['--c1', '--c2', '--c3', '--c4', '--c5', '--c6', '--c7', '--c8'].map(css);
    return named.filter(Boolean).concat(['#0891b2', '#9333ea', '#65a30d', '#db2777']);
  }

  function align(runs, metric, series) {
    const all = new Set();
    runs.forEach(function (r) {
      const s = series[r.id] || {};
      (s.step || []).forEach(function (x, i) { if (s[metric] && s[metric][i] != null) all.add(x); });
    });
    const steps = Array.from(all).sort(function (a, b) { return a - b; });
    const at = new Map(steps.map(function (x, i) { return [x, i]; }));
    const cols = runs.map(function (r) {
      const col = new Array(steps.length).fill(null);
      const s = series[r.id] || {};
      const vals = s[metric] || [];
      (s.step || []).forEach(function (x, i) {
        if (vals[i] != null && at.has(x)) col[at.get(x)] = vals[i];
      });
      return col;
    });
    return [steps].concat(cols);
  }

  function draw() {
    if (plot) { plot.destroy(); plot = null; }
    if (!current || !current.data[0].length) {
      empty.textContent = current ? 'None of these runs logged ' + current.metric + '.' : '';
      empty.hidden = false;
      return;
    }
    empty.hidden = true;
    const axis = {
      stroke: css('--muted'),
      grid: { stroke: css('--grid'), width: 1 },
      ticks: { stroke: css('--grid'), width: 1 },
      font: '12px ' + css('--font-mono'),
    };
    const colors = palette();
    plot = new uPlot({
      width: Math.max(240, el.clientWidth),
      height: HEIGHT,
      scales: { x: { time: false }, y: { range: PC.valueRange } },
      cursor: { drag: { x: true, y: false } },
      hooks: { setLegend: [PC.showLastWhenIdle] },
      series: [{ label: 'step', value: function (u, v) { return v == null ? '--' : v; } }]
        .concat(current.runs.map(function (r, i) {
          return { label: '#' + r.id + ' ' + r.name, stroke: colors[i % colors.length],
            width: 2, spanGaps: true, points: { size: 4 }, value: PC.pointValue };
        })),
      axes: [Object.assign({ label: 'step', labelSize: 20 }, axis),
        Object.assign({ size: PC.axisSize, values: PC.tickValues, label: current.metric,
          labelSize: 20 }, axis)],
    }, current.data, el);
    PC.showLastWhenIdle(plot); // the legend shows each run's last value, not "--"
    window.prospectCompare.plot = plot;
  }

  function load(metric) {
    if (!metric) return;
    empty.textContent = 'Loading ' + metric + '…';
    const url = '/api/compare?ids=' + encodeURIComponent(ids) + '&names=' +
      encodeURIComponent(metric) + '&max_points=' + MAX_POINTS;
    fetch(url, { headers: { Accept: 'application/json' } })
      .then(function (r) {
        if (!r.ok) throw new Error('GET ' + url + ': ' + r.status);
        return r.json();
      })
      .then(function (body) {
        current = { metric: metric, runs: body.runs, data: align(body.runs, metric, body.series) };
        window.prospectCompare.metric = metric;
        draw();
      })
      .catch(function (err) {
        empty.textContent = 'Could not load the series: ' + err.message;
        empty.hidden = false;
      });
  }

  window.prospectCompare = { plot: null, metric: null };
  if (select) {
    select.addEventListener('change', function () {
      const url = new URL(window.location.href);
      url.searchParams.set('metric', select.value);
      history.replaceState(null, '', url);
      load(select.value);
    });
  }
  if (window.ResizeObserver) {
    new ResizeObserver(function () {
      if (plot) plot.setSize({ width: Math.max(240, el.clientWidth), height: HEIGHT });
    }).observe(el);
  }
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', draw);
  load(el.dataset.metric);
})();
