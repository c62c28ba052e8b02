// Buttons on the adapters page (and any page listing things): a button with data-action,
// data-url and data-method sends that request with the CSRF header after its data-confirm
// question, then reloads (data-go="reload") or opens the job it created (data-go="job").
(function () {
  'use strict';

  const errorEl = document.getElementById('action-error');
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';

  function message(r, body) {
    const d = body && body.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d) && d.length) return d[0].msg;
    return r.status + ' ' + r.statusText;
  }

  document.addEventListener('click', function (evt) {
    const btn = evt.target.closest && evt.target.closest('button[data-action][data-url]');
    if (!btn || btn.disabled) return;
    if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
    btn.disabled = true;
    if (errorEl) errorEl.hidden = true;
    fetch(btn.dataset.url, { method: btn.dataset.method || 'POST',
      headers: { 'X-CSRF-Token': csrf, Accept: 'application/json' } })
      .then(function (r) {
        return r.text().then(function (text) {
          let body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!r.ok) throw new Error(message(r, body));
          return body;
        });
      })
      .then(function (body) {
        if (btn.dataset.go === 'job' && body && body.id) window.location.assign('/jobs/' + body.id);
        else window.location.reload();
      })
      .catch(function (err) {
        btn.disabled = false;
        if (!errorEl) return;
        errorEl.textContent = btn.textContent.trim() + ' failed: ' + err.message;
        errorEl.hidden = false;
        errorEl.focus && errorEl.focus();
      });
  });
})();
