// Feedback: the rating bar under each finished playground answer, and the Feedback page's
// selection note.
//
// Playground (templates/playground.html): static/js/playground.js marks each answer with
// its reply id (data-completion-id, the stream chunks' "id") and fires "pg:answered" when it
// finishes. Here a bar is added under it: 👍 / 👎 (POST /api/feedback {completion_id,
// label}; pressing the other one flips the rating with PATCH, clicking the pressed one takes
// it back with DELETE; a key only sets) and "Correct it" (a textarea; POST with the correction: the answer
// becomes 👎 and the correction 👍). Keys, with an answer focused (click it or Tab to it):
// + or = 👍, - 👎, c correct it; Alt+↑ / Alt+↓ rate the answer focused last (or the
// latest one) from anywhere but the correction's textarea, the prompt included.
(function () {
  'use strict';

  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';
  const JSON_HEADERS = { 'X-CSRF-Token': csrf, 'Content-Type': 'application/json',
    Accept: 'application/json' };
  const KEYS_UP = '+ or Alt+↑';
  const KEYS_DOWN = '- or Alt+↓';

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  async function problem(res) {
    try {
      const body = await res.json();
      const d = body.detail;
      if (typeof d === 'string') return d;
      if (Array.isArray(d) && d[0]) return d[0].msg;
    } catch (e) { /* not JSON */ }
    return 'the server answered ' + res.status;
  }

  // --- the playground ------------------------------------------------------------------------
  let lastFocused = null;

  function bar(answer) { return answer.querySelector('.fb-rate'); }

  function show(answer) {
    const b = bar(answer);
    const label = answer.dataset.fbLabel;
    b.querySelector('.fb-up').setAttribute('aria-pressed', label === 'true' ? 'true' : 'false');
    b.querySelector('.fb-down').setAttribute('aria-pressed', label === 'false' ? 'true' : 'false');
    answer.dataset.rated = label ? 'true' : 'false';
  }

  function note(answer, text, isError) {
    const n = bar(answer).querySelector('.fb-rate-note');
    n.textContent = text;
    n.classList.toggle('fb-error', !!isError);
  }

  async function send(answer, method, url, body) {
    const b = bar(answer);
    b.setAttribute('aria-busy', 'true');
    try {
      const res = await fetch(url, { method: method, headers: JSON_HEADERS,
        body: body === undefined ? undefined : JSON.stringify(body) });
      if (!res.ok) throw new Error(await problem(res));
      return res.status === 204 ? null : await res.json();
    } finally {
      b.removeAttribute('aria-busy');
    }
  }

  async function rate(answer, label, byKey) {
    if (bar(answer).getAttribute('aria-busy') === 'true') return;
    const id = answer.dataset.feedbackId;
    try {
      if (id && answer.dataset.fbLabel === String(label) && byKey) {  // a key only sets it
        note(answer, label ? 'already saved as good' : 'already saved as bad');
      } else if (id && answer.dataset.fbLabel === String(label)) {  // clicked again: take it back
        await send(answer, 'DELETE', '/api/feedback/' + id);
        delete answer.dataset.feedbackId;
        delete answer.dataset.fbLabel;
        note(answer, 'rating removed');
      } else if (id) {
        await send(answer, 'PATCH', '/api/feedback/' + id, { label: label });
        answer.dataset.fbLabel = String(label);
        note(answer, label ? 'changed to good' : 'changed to bad');
      } else {
        const out = await send(answer, 'POST', '/api/feedback',
          { completion_id: answer.dataset.completionId, label: label });
        answer.dataset.feedbackId = String(out.items[0].id);
        answer.dataset.fbLabel = String(label);
        note(answer, label ? 'saved as good' : 'saved as bad');
      }
    } catch (e) {
      note(answer, 'Not saved: ' + e.message, true);
    }
    show(answer);
  }

  function openFix(answer) {
    const b = bar(answer);
    let fix = b.querySelector('.fb-fix');
    if (fix) { fix.querySelector('textarea').focus(); return; }
    fix = el('div', 'fb-fix');
    const tid = 'fb-fix-' + answer.dataset.completionId;
    const label = el('label', '', 'What it should have said');
    label.htmlFor = tid;
    const area = el('textarea');
    area.id = tid;
    area.rows = 3;
    area.value = answer.querySelector('.pg-text').textContent;
    const actions = el('div', 'fb-fix-actions');
    const save = el('button', 'button small primary fb-fix-save', 'Save correction');
    save.type = 'button';
    const cancel = el('button', 'button small fb-fix-cancel', 'Cancel');
    cancel.type = 'button';
    actions.append(save, cancel, el('span', 'muted small', 'Ctrl+Enter saves · Esc cancels'));
    fix.append(label, area, actions);
    b.appendChild(fix);
    area.focus();
    const close = function () { fix.remove(); answer.focus(); };
    const submit = async function () {
      const text = area.value;
      if (!text.trim()) { note(answer, 'Write what it should have said first.', true); return; }
      try {
        const out = await send(answer, 'POST', '/api/feedback',
          { completion_id: answer.dataset.completionId, label: false, correction: text });
        answer.dataset.feedbackId = String(out.items[0].id);
        answer.dataset.fbLabel = 'false';
        answer.dataset.corrected = 'true';
        show(answer);
        note(answer, 'corrected: the answer saved as bad, your text as good');
        close();
      } catch (e) {
        note(answer, 'Not saved: ' + e.message, true);
      }
    };
    save.addEventListener('click', submit);
    cancel.addEventListener('click', close);
    area.addEventListener('keydown', function (evt) {
      if (evt.key === 'Enter' && (evt.ctrlKey || evt.metaKey)) { evt.preventDefault(); submit(); }
      if (evt.key === 'Escape') { evt.preventDefault(); close(); }
    });
  }

  function button(cls, text, title) {
    const b = el('button', 'button small ' + cls, text);
    b.type = 'button';
    b.title = title;
    b.setAttribute('aria-label', title);
    return b;
  }

  function addBar(answer) {
    if (!answer.dataset.completionId || bar(answer)) return;
    const b = el('div', 'fb-rate');
    const up = button('fb-up', '👍 Good', 'Good answer (' + KEYS_UP + ')');
    const down = button('fb-down', '👎 Bad', 'Bad answer (' + KEYS_DOWN + ')');
    const fix = button('fb-correct', 'Correct it', 'Write what it should have said (c)');
    up.setAttribute('aria-pressed', 'false');
    down.setAttribute('aria-pressed', 'false');
    up.addEventListener('click', function () { rate(answer, true); });
    down.addEventListener('click', function () { rate(answer, false); });
    fix.addEventListener('click', function () { openFix(answer); });
    const keys = el('span', 'fb-keys', 'answer focused: + / - / c');
    b.append(up, down, fix, el('span', 'fb-rate-note', ''), keys);
    b.setAttribute('role', 'group');
    b.setAttribute('aria-label', 'Rate this answer');
    answer.appendChild(b);
    answer.tabIndex = 0;
    answer.dataset.rated = 'false';
  }

  function typing(target) {
    return target && (target.isContentEditable || /^(TEXTAREA|INPUT|SELECT)$/.test(target.tagName));
  }

  function latest() {
    if (lastFocused && document.body.contains(lastFocused) && bar(lastFocused)) return lastFocused;
    const all = document.querySelectorAll('.pg-answer[data-completion-id] .fb-rate');
    return all.length ? all[all.length - 1].closest('.pg-answer') : null;
  }

  if (document.getElementById('playground')) {
    document.addEventListener('pg:answered', function (evt) { addBar(evt.target); });
    document.addEventListener('focusin', function (evt) {
      const a = evt.target.closest && evt.target.closest('.pg-answer');
      if (a && bar(a)) lastFocused = a;
    });
    document.addEventListener('keydown', function (evt) {
      if (evt.ctrlKey || evt.metaKey) return;
      let answer = null;
      let key = evt.key;
      const inFix = evt.target.closest && evt.target.closest('.fb-fix');
      if (evt.altKey && (key === 'ArrowUp' || key === 'ArrowDown') && !inFix) {
        answer = latest();  // also from the prompt: Alt+arrows move nothing there
        key = key === 'ArrowUp' ? '+' : '-';
      } else if (typing(evt.target)) {
        return;
      } else if (!evt.altKey) {
        answer = evt.target.closest && evt.target.closest('.pg-answer');
        if (answer && !bar(answer)) answer = null;
      }
      if (!answer) return;
      if (key === '+' || key === '=') { evt.preventDefault(); rate(answer, true, true); }
      else if (key === '-') { evt.preventDefault(); rate(answer, false, true); }
      else if ((key === 'c' || key === 'C') && !evt.altKey) { evt.preventDefault(); openFix(answer); }
    });
  }

  // --- the Feedback page ---------------------------------------------------------------------
  function picked() {
    const note = document.getElementById('fb-picked');
    if (!note) return;
    const all = document.getElementById('fb-all');
    const ticked = document.querySelectorAll('input[name="ids"][form="fb-make"]:checked').length;
    note.textContent = all && all.checked ? 'every row matching the filters'
      : ticked ? ticked + ' row' + (ticked === 1 ? '' : 's') + ' ticked' : 'or tick rows below';
  }

  if (document.getElementById('fb-filters')) {
    document.addEventListener('change', function (evt) {
      if (evt.target.name === 'ids' || evt.target.id === 'fb-all') picked();
    });
    document.body.addEventListener('htmx:afterSettle', picked);
  }
})();
