// Chart building blocks for the job page (static/js/job.js): a step-aligned store of columns
// and a uPlot chart over one store, themed from the CSS variables of static/css/app.css.
(function () {
  'use strict';

  const CHART_HEIGHT = 240;

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
  // The y range never zooms below what the values' own precision warrants: values show 4
  // significant digits, so a span under 1e-3 of their magnitude cannot be read on the ticks
  // and only turns float noise into a cliff (loss 0.499992 -> 0.500000 drew full height).
  // Such a span is widened around its middle, so a nearly flat series reads flat.
  const REL_SPAN_FLOOR = 1e-3;
  const ABS_SPAN_FLOOR = 1e-12;
  function spanFloor(min, max) {
    return Math.max(Math.max(Math.abs(min), Math.abs(max)) * REL_SPAN_FLOOR, ABS_SPAN_FLOOR);
  }
  function valueRange(u, min, max) {
    if (min == null || max == null || !isFinite(min) || !isFinite(max)) return [min, max];
    const floor = spanFloor(min, max);
    if (max - min < floor) {
      const mid = (min + max) / 2;
      min = mid - floor / 2;
      max = mid + floor / 2;
    }
    return uPlot.rangeNum(min, max, 0.1, true); // uPlot's own default padding from here on
  }
  // Memory is binary and says so (1 GiB = 2**30 bytes), written as app/units.py fmt_bytes
  // writes it: the charts hold GiB; under 1 GiB the value reads in MiB.
  function fmtGiB(v) {
    if (v == null || !isFinite(v)) return '--';
    const a = Math.abs(v);
    const [x, unit] = a >= 1024 ? [v / 1024, 'TiB'] : a >= 1 ? [v, 'GiB']
      : a >= 1 / 1024 ? [v * 1024, 'MiB'] : a >= 1 / 1048576 ? [v * 1048576, 'KiB'] : [null];
    if (x == null) return Math.round(v * 1073741824) + ' B';
    return (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) + ' ' + unit;
  }
  function gbValue(u, v) { return fmtGiB(v); }
  // Axis ticks share one unit: MiB when the axis stays under 1 GiB, GiB otherwise.
  function memoryTicks(u, splits) {
    const mib = u.scales.y.max != null && u.scales.y.max < 1;
    return splits.map(function (v) {
      if (v == null) return '';
      return mib ? +(v * 1024).toFixed(1) + ' MiB' : +v.toFixed(2) + ' GiB';
    });
  }
  // Tick positions at round numbers of the unit the ticks are written in (256 MiB, not
  // 0.25 GiB = 256 MiB written as "256" next to "102", "205"...).
  function memorySplits(u, axisIdx, min, max) {
    const unit = max < 1 ? 1 / 1024 : 1;
    const lo = min / unit;
    const hi = max / unit;
    const rough = (hi - lo) / 5 || 1;
    const pow = Math.pow(10, Math.floor(Math.log10(rough)));
    const incr = [1, 2, 2.5, 5, 10].map(function (m) { return m * pow; })
      .find(function (x) { return x >= rough; }) || 10 * pow;
    const out = [];
    for (let v = Math.ceil(lo / incr) * incr; v <= hi + 1e-9; v += incr) out.push(v * unit);
    return out;
  }
  // Vertical dashed lines at chosen x values with a short label (a resumed run's restarts).
  function drawMarkers(u) {
    const marks = u.prospectMarks || [];
    if (!marks.length) return;
    const ctx = u.ctx;
    const top = u.bbox.top;
    const bottom = top + u.bbox.height;
    ctx.save();
    ctx.strokeStyle = css('--muted');
    ctx.fillStyle = css('--muted');
    ctx.lineWidth = 1.5 * uPlot.pxRatio;
    ctx.setLineDash([4 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
    ctx.font = (11 * uPlot.pxRatio) + 'px ' + css('--font-mono');
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    marks.forEach(function (m) {
      if (m.x < u.scales.x.min || m.x > u.scales.x.max) return;
      const x = Math.round(u.valToPos(m.x, 'x', true));
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
      ctx.fillText(m.label, x + 4 * uPlot.pxRatio, top + 2 * uPlot.pxRatio);
    });
    ctx.restore();
  }
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

  // A job on several processes: one memory column per rank (app/jobs/series.py), drawn as a
  // line per GPU (or Mac) in place of rank 0's allocator lines, once there are two or more.
  const RANK = /^rank(\d+)_active$/;
  const RANK_HIDES = ['backend_active', 'backend_driver']; // rank 0's own, drawn as rank 0
  const RANK_COLORS = ['--c2', '--c6', '--c1', '--c3', '--c4', '--c5'];
  function rankOf(name) { const m = RANK.exec(name); return m ? parseInt(m[1], 10) : null; }

  // --- charts ---------------------------------------------------------------------------------
  // A chart over one store's columns; the element's data-series names the columns it draws
  // and data-source the store. ``backend`` names the allocator for the memory legend and
  // ``rankLabel(rank)`` a rank's line.
  function Chart(key, stores, backend, rankLabel) {
    this.key = key;
    this.backend = backend || function () { return null; };
    this.rankLabel = rankLabel || function (r) { return 'rank ' + r; };
    this.el = document.getElementById('chart-' + key);
    this.empty = document.getElementById('chart-' + key + '-empty');
    this.source = this.el.dataset.source || 'metrics';
    this.store = stores[this.source];
    this.wanted = this.el.dataset.series.split(',');
    this.names = [];
    this.plot = null;
    this.only = null; // when set, only these columns are drawn (the memory chart's toggle)
    this.marks = []; // [{x, label}]: vertical markers (where a resumed run restarted)
  }

  Chart.prototype.present = function () {
    const cols = this.store.cols;
    const only = this.only;
    const drawn = function (name) {
      const col = cols[name];
      return col && col.some(function (v) { return v != null; });
    };
    const ranks = this.source !== 'memory' ? [] : Object.keys(cols)
      .filter(function (n) { return rankOf(n) != null && drawn(n); })
      .sort(function (a, b) { return rankOf(a) - rankOf(b); });
    const perRank = ranks.length > 1;
    return this.wanted.filter(function (name) {
      if (only && only.indexOf(name) < 0) return false;
      if (perRank && RANK_HIDES.indexOf(name) >= 0) return false;
      return drawn(name);
    }).concat(perRank ? ranks : []); // the process's own: kept by "scale to the process"
  };

  // Held-out metrics (TRL's eval_ prefix, mlx-lm's val_loss) read "held-out …" in a legend;
  // beside them the training series read "train …", so the two are never confused.
  function heldOut(name) { return name.indexOf('eval_') === 0 || name === 'val_loss'; }
  function seriesLabel(name, names) {
    if (name.indexOf('eval_') === 0) return 'held-out ' + name.slice(5);
    if (name === 'val_loss') return 'held-out loss';
    return names.some(heldOut) ? 'train ' + name : name;
  }

  Chart.prototype.seriesFor = function (name, i) {
    const palette = ['--c1', '--c2', '--c3', '--c4', '--c5', '--c6'].map(css);
    if (this.source !== 'memory') {
      const s = { label: seriesLabel(name, this.names), stroke: palette[i % palette.length],
        width: 2, spanGaps: true, points: { size: 5 }, value: pointValue };
      // A held-out series beside training ones is dashed: the pair reads apart at a glance.
      if (heldOut(name) && this.names.some(function (n) { return !heldOut(n); })) {
        s.dash = [6, 3];
      }
      return s;
    }
    const rank = rankOf(name);
    if (rank != null) { // ranks 0 and 1 in the allocator's colours they replace, then dashed
      const color = css(RANK_COLORS[rank % RANK_COLORS.length]);
      const s = { label: this.rankLabel(rank), stroke: color, width: 2, spanGaps: true,
        points: { show: false }, value: gbValue };
      if (rank >= 2) s.dash = rank >= 2 + RANK_COLORS.length ? [2, 3] : [6, 3];
      return s;
    }
    let label = MEMORY_LABELS[name] || name;
    if (name === 'rss' && this.names.some(function (n) { return rankOf(n) != null; })) {
      label = 'rank 0 process'; // its host memory, beside every rank's allocator
    }
    const backendName = this.backend();
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
        return [0, max > 0 ? max * 1.05 : 1]; } } : { range: valueRange } },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: memory ? 'time' : 'step',
        value: function (u, v) { return v == null ? '--' : (memory ? clock(v) : v); } }]
        .concat(names.map(function (name, i) { return self.seriesFor(name, i); })),
      axes: [Object.assign(xAxis, axis),
        Object.assign({ size: axisSize, values: memory
          ? memoryTicks : tickValues }, memory ? { splits: memorySplits } : {}, axis)],
      hooks: { setLegend: [showLastWhenIdle], draw: [drawMarkers] },
    }, this.data(), this.el);
    this.plot.prospectMarks = this.marks;
    this.empty.hidden = true;
    const panel = this.el.closest('[data-hide-empty]'); // shown once it has something to draw
    if (panel && panel.hidden) {
      panel.hidden = false;
      this.plot.setSize({ width: Math.max(200, this.el.clientWidth), height: CHART_HEIGHT });
    }
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

  // The compare page (static/js/compare.js) formats and themes its chart with these too.
  window.ProspectCharts = { Store: Store, Chart: Chart, css: css, showLastWhenIdle:
    showLastWhenIdle, pointValue: pointValue, tickValues: tickValues, axisSize: axisSize,
    valueRange: valueRange, fmtGiB: fmtGiB, spanFloor: spanFloor };
})();
