// The playground (templates/playground.html): one conversation sent to two models at once.
//
// Each column streams its answer from POST /v1/chat/completions (stream: true: server-sent
// "data:" lines of OpenAI chunks, the last with finish_reason and the "prospect" stats, then
// [DONE]). The prompts are shared; each column keeps its own model's answers as the assistant
// turns of its conversation. Stop aborts both fetches: a closed connection makes the server
// cancel the generation. The loaded-models panel reads GET /api/inference every 5 s while the
// page is visible, and after each answer.
(function () {
  'use strict';

  const root = document.getElementById('playground');
  if (!root) return;
  const $ = function (id) { return document.getElementById(id); };
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';
  const COLS = ['a', 'b'];
  const form = $('pg-form');
  const prompt = $('pg-prompt');
  const send = $('pg-send');
  const stop = $('pg-stop');
  const status = $('pg-status');
  let turns = [];            // {user, answers: {a: {text, ok}, b: …}}
  let running = null;        // {controllers: [AbortController], pending: n}

  // The jobs list's "Side by side" link: the runs ticked there (runs.js keeps them in
  // sessionStorage) become ?jobs=…, a URL that can be shared.
  const params = new URLSearchParams(window.location.search);
  if (params.has('picked')) {
    let ids = [];
    try { ids = JSON.parse(sessionStorage.getItem('prospect.compare') || '[]'); } catch (e) { /* none */ }
    ids = Array.isArray(ids) ? ids.filter(Number.isInteger).slice(0, 2) : [];
    window.location.replace('/playground' + (ids.length ? '?jobs=' + ids.join(',') : ''));
    return;
  }

  const JSON_POST = { 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function bytes(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '—';
    const gib = n / 1073741824;
    return gib >= 1 ? gib.toFixed(2) + ' GiB' : (n / 1048576).toFixed(0) + ' MiB';
  }

  function num(n, digits) { return typeof n === 'number' && isFinite(n) ? n.toFixed(digits) : '—'; }
  function secs(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '—';
    return s < 1 ? Math.max(1, Math.round(s * 1000)) + ' ms' : s.toFixed(2) + ' s';
  }

  // --- the columns' models -------------------------------------------------------------
  function modelOf(col) { return $('pg-model-' + col).value; }

  function describe(col) {
    const sel = $('pg-model-' + col);
    const opt = sel.selectedOptions[0];
    const note = $('pg-note-' + col);
    $('pg-col-' + col).classList.toggle('pg-off', !sel.value);
    if (!opt || !sel.value) { note.textContent = 'Off: only column A answers.'; return; }
    const kind = opt.dataset.kind;
    const backend = opt.dataset.backend ? ' · ' + opt.dataset.backend : '';
    note.textContent = kind === 'adapter' ? 'adapter on ' + opt.dataset.base + backend
      : kind === 'fused' ? 'fused model' + backend : 'base model (no adapter)' + backend;
  }

  function syncUrl() {
    const q = new URLSearchParams();
    q.set('model', modelOf('a'));
    q.set('compare', modelOf('b'));
    history.replaceState(null, '', '/playground?' + q.toString());
  }

  COLS.forEach(function (col) {
    describe(col);
    $('pg-model-' + col).addEventListener('change', function () { describe(col); syncUrl(); });
  });

  // --- the conversation ----------------------------------------------------------------
  function messagesFor(col, user) {
    const msgs = [];
    const system = $('pg-system').value.trim();
    if (system) msgs.push({ role: 'system', content: system });
    turns.forEach(function (t) {
      const ans = t.answers[col];
      if (!ans) return; // the column was off for that turn
      msgs.push({ role: 'user', content: t.user });
      msgs.push({ role: 'assistant', content: ans.text });
    });
    msgs.push({ role: 'user', content: user });
    return msgs;
  }

  function sampling() {  // the knobs left empty (or not numbers) take the API's defaults
    const body = {};
    [['max_tokens', 'pg-max-tokens', parseInt], ['temperature', 'pg-temperature', parseFloat],
      ['top_p', 'pg-top-p', parseFloat], ['seed', 'pg-seed', parseInt]].forEach(function (k) {
      const value = k[2]($(k[1]).value, 10);
      if (!isNaN(value)) body[k[0]] = value;
    });
    return body;
  }

  // One answer's elements in its column's log.
  function answerBox(col, user) {
    const log = $('pg-log-' + col);
    const ph = log.querySelector('.pg-placeholder');
    if (ph) ph.remove();
    const turn = el('div', 'pg-turn');
    turn.appendChild(el('div', 'pg-user', user));
    const answer = el('div', 'pg-answer');
    answer.dataset.state = 'waiting';
    const text = el('div', 'pg-text');
    const meta = el('div', 'pg-meta muted small', 'waiting for the model…');
    answer.appendChild(text);
    answer.appendChild(meta);
    turn.appendChild(answer);
    log.appendChild(turn);
    log.scrollTop = log.scrollHeight;
    return { answer: answer, text: text, meta: meta, log: log };
  }

  function setState(col, box, state) {
    box.answer.dataset.state = state;
    $('pg-col-' + col).dataset.state = state;
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body.error && body.error.message) return body.error.message;
      if (typeof body.detail === 'string') return body.detail;
      if (Array.isArray(body.detail) && body.detail[0]) return body.detail[0].msg;
    } catch (e) { /* not JSON */ }
    return 'the server answered ' + res.status + ' ' + res.statusText;
  }

  function showError(col, box, message) {
    setState(col, box, 'error');
    box.meta.textContent = '';
    const err = el('p', 'pg-error', message);
    err.setAttribute('role', 'alert');
    box.answer.appendChild(err);
  }

  function showStats(box, stats, usage, finish) {
    const tokens = usage && typeof usage.completion_tokens === 'number' ? usage.completion_tokens : null;
    box.meta.textContent = '';
    [['tokens', tokens === null ? '—' : String(tokens)],
      ['TTFT', secs(stats.ttft_s)],
      ['tokens/s', num(stats.tokens_per_s, 1)],
      ['finish', finish || stats.finish_reason || '—']].forEach(function (pair) {
      const s = el('span', 'pg-stat');
      s.dataset.stat = pair[0];
      s.appendChild(el('b', '', pair[1]));
      s.appendChild(document.createTextNode(' ' + pair[0]));
      box.meta.appendChild(s);
    });
  }

  // Read the SSE body: blocks separated by a blank line, each a "data:" payload.
  async function readStream(res, onData) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buf = (buf + decoder.decode(chunk.value, { stream: true })).replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split('\n').filter(function (l) { return l.startsWith('data:'); })
          .map(function (l) { return l.slice(5).replace(/^ /, ''); }).join('\n');
        if (data && onData(data) === false) { reader.cancel().catch(function () {}); return; }
      }
    }
  }

  async function ask(col, user, record, controller) {
    const box = answerBox(col, user);
    const body = Object.assign({ model: modelOf(col), messages: messagesFor(col, user),
      stream: true, stream_options: { include_usage: true } }, sampling());
    let stats = {}; let usage = null; let finish = null; let failed = null; let got = false;
    try {
      const res = await fetch('/v1/chat/completions', {
        method: 'POST', headers: Object.assign({ Accept: 'text/event-stream' }, JSON_POST),
        body: JSON.stringify(body), signal: controller.signal });
      if (!res.ok) throw new Error(await errorMessage(res));
      await readStream(res, function (data) {
        if (data === '[DONE]') return false;
        let obj;
        try { obj = JSON.parse(data); } catch (e) { return true; }
        if (obj.error) { failed = obj.error.message || 'the generation failed'; return true; }
        if (obj.usage) usage = obj.usage;
        if (obj.prospect) stats = obj.prospect;
        if (obj.id) box.answer.dataset.completionId = obj.id;  // rated by it (feedback.js)
        const choice = obj.choices && obj.choices[0];
        if (!choice) return true;
        if (choice.finish_reason) finish = choice.finish_reason;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (!got) { got = true; setState(col, box, 'streaming'); box.meta.textContent = 'streaming…'; }
          box.text.textContent += piece;
          box.log.scrollTop = box.log.scrollHeight;
        }
        return true;
      });
      record.text = box.text.textContent;
      if (failed) { showError(col, box, failed); return; }
      if (!finish) { showError(col, box, 'the answer ended without finishing (the connection closed)'); return; }
      showStats(box, stats, usage, finish);
      if (record.text && !record.text.trim()) {  // a model that only says newlines
        box.text.textContent = '';
        box.text.appendChild(el('span', 'pg-blank muted',
          '(only whitespace: ' + JSON.stringify(record.text.slice(0, 12)).slice(1, -1) +
          (record.text.length > 12 ? '…' : '') + ')'));
      }
      setState(col, box, 'done');
      box.answer.dispatchEvent(new CustomEvent('pg:answered', { bubbles: true }));
    } catch (e) {
      record.text = box.text.textContent;
      if (e.name === 'AbortError') {
        setState(col, box, 'stopped');
        box.meta.textContent = 'stopped after ' + box.text.textContent.length + ' characters';
      } else {
        showError(col, box, e.message || String(e));
      }
    }
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
    $('pg-clear').disabled = on;
    COLS.forEach(function (col) { $('pg-model-' + col).disabled = on; });
    root.dataset.busy = on ? 'true' : 'false';
  }

  async function sendPrompt() {
    const user = prompt.value.trim();
    if (running) return;
    if (!user) { status.textContent = 'Type a prompt first.'; prompt.focus(); return; }
    const cols = COLS.filter(function (col) { return modelOf(col); });
    if (!cols.length) { status.textContent = 'Pick a model for column A.'; return; }
    const turn = { user: user, answers: {} };
    running = { controllers: [] };
    busy(true);
    status.textContent = 'Answering…';
    prompt.value = '';
    setTimeout(refreshLoaded, 1500); // the model may be loading: show it
    await Promise.all(cols.map(function (col) {
      const controller = new AbortController();
      running.controllers.push(controller);
      turn.answers[col] = { text: '' };
      return ask(col, user, turn.answers[col], controller);
    }));
    turns.push(turn);
    running = null;
    busy(false);
    status.textContent = '';
    prompt.focus();
    refreshLoaded();
  }

  form.addEventListener('submit', function (evt) { evt.preventDefault(); sendPrompt(); });
  prompt.addEventListener('keydown', function (evt) {
    if (evt.key === 'Enter' && (evt.ctrlKey || evt.metaKey)) { evt.preventDefault(); sendPrompt(); }
  });
  stop.addEventListener('click', function () {
    if (running) running.controllers.forEach(function (c) { c.abort(); });
  });
  $('pg-clear').addEventListener('click', function () {
    turns = [];
    COLS.forEach(function (col) {
      const log = $('pg-log-' + col);
      log.textContent = '';
      log.appendChild(el('p', 'pg-placeholder muted small', 'Answers appear here as they stream.'));
      $('pg-col-' + col).dataset.state = 'idle';
    });
    status.textContent = 'Cleared: the next prompt starts a new conversation.';
    prompt.focus();
  });

  // --- a prompt from a dataset -----------------------------------------------------------
  function promptText(row) {
    const p = row.prompt !== undefined ? row.prompt : row.messages;
    if (typeof p === 'string') return p;
    if (Array.isArray(p)) {
      const users = p.filter(function (m) { return m && m.role === 'user'; });
      const last = users[users.length - 1];
      return last && typeof last.content === 'string' ? last.content : '';
    }
    return typeof row.text === 'string' ? row.text : '';
  }

  $('pg-dataset-pick').addEventListener('click', async function () {
    const id = $('pg-dataset').value;
    const note = $('pg-dataset-note');
    if (!id) return;
    note.textContent = 'Reading ' + id + '…';
    try {
      const res = await fetch('/api/datasets/' + encodeURIComponent(id) + '/preview?limit=200',
        { headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(await errorMessage(res));
      const rows = (await res.json()).map(promptText).filter(function (t) { return t.trim(); });
      if (!rows.length) { note.textContent = id + ' has no prompt to offer.'; return; }
      const i = Math.floor(Math.random() * rows.length);
      prompt.value = rows[i];
      note.textContent = 'One of the first ' + rows.length + ' prompts of ' + id + '.';
      prompt.focus();
    } catch (e) {
      note.textContent = 'Could not read ' + id + ': ' + e.message;
    }
  });

  // --- loaded models -----------------------------------------------------------------------
  const loadedBody = $('pg-loaded-body');
  const unloadAll = $('pg-unload-all');

  function row(cells) { const tr = el('tr'); cells.forEach(function (c) { tr.appendChild(c); }); return tr; }
  function td(text, cls) { return el('td', cls, text); }

  function renderLoaded(info) {
    loadedBody.textContent = '';
    const workers = info.workers || [];
    workers.forEach(function (w) {
      const button = el('button', 'button small danger', 'Unload');
      button.type = 'button';
      button.dataset.model = w.model;
      button.dataset.backend = w.backend;
      button.setAttribute('aria-label', 'Unload ' + w.model + ' (' + w.backend + ')');
      const act = td('', 'row-actions');
      act.appendChild(button);
      const state = w.state === 'loading' ? 'loading…' : w.busy
        ? 'answering' + (w.waiting ? ', ' + w.waiting + ' waiting' : '') : 'idle';
      const tr = row([td(w.model, 'mono'), td(w.backend, 'mono'),
        td((w.device || '—') + (w.dtype ? ' · ' + w.dtype : ''), 'mono'),
        td(bytes(w.memory_bytes), 'num mono'), td(String((w.adapters || []).length), 'num'),
        td(state), act]);
      tr.dataset.model = w.model;
      loadedBody.appendChild(tr);
    });
    if (!workers.length) {
      const cell = td('Nothing loaded: the first prompt loads a model (it stays loaded until idle, unloaded, or a job needs the memory).');
      cell.colSpan = 7;
      const tr = row([cell]);
      tr.className = 'empty-row';
      loadedBody.appendChild(tr);
    }
    unloadAll.hidden = workers.length < 2;
    const idle = info.idle_timeout_s;
    $('pg-idle-note').textContent = typeof idle === 'number' ? 'unloaded after ' + Math.round(idle) + ' s idle' : '';
    const last = info.last_unload;
    const lastEl = $('pg-last-unload');
    lastEl.hidden = !last;
    if (last) {
      const at = last.at ? new Date(typeof last.at === 'number' ? last.at * 1000 : last.at) : null;
      lastEl.textContent = 'unloaded: ' + last.model + (last.backend ? ' (' + last.backend + ')' : '') +
        ' · ' + last.reason + (at && !isNaN(at) ? ' · ' + at.toLocaleTimeString() : '');
    }
  }

  let loading = false;
  async function refreshLoaded() {
    if (loading) return;
    loading = true;
    try {
      const res = await fetch('/api/inference', { headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(await errorMessage(res));
      renderLoaded(await res.json());
    } catch (e) {
      loadedBody.textContent = '';
      const cell = td('Could not read the loaded models: ' + e.message);
      cell.colSpan = 7;
      loadedBody.appendChild(row([cell]));
    } finally {
      loading = false;
    }
  }

  async function unload(model, backend) {
    const res = await fetch('/api/inference/unload', { method: 'POST', headers: JSON_POST,
      body: JSON.stringify({ model: model, backend: backend }) });
    status.textContent = res.ok ? (model ? 'Unloaded ' + model + '.' : 'Unloaded every model.')
      : 'Unload failed: ' + await errorMessage(res);
    refreshLoaded();
  }

  loadedBody.addEventListener('click', function (evt) {
    const b = evt.target.closest && evt.target.closest('button[data-model]');
    if (!b) return;
    b.disabled = true;
    unload(b.dataset.model, b.dataset.backend || null);
  });
  unloadAll.addEventListener('click', function () { unload(null, null); });

  refreshLoaded();
  setInterval(function () { if (document.visibilityState === 'visible') refreshLoaded(); }, 5000);
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') refreshLoaded();
  });
  window.prospectPlayground = { turns: function () { return turns; }, refreshLoaded: refreshLoaded };
})();
