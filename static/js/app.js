// Small page helpers shared by every page (no build step, no framework beyond htmx).
(function () {
  'use strict';

  function pad(n) { return String(n).padStart(2, '0'); }

  function localTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return null;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + pad(s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + pad(Math.floor(s % 3600 / 60)) + 'm';
  }

  // Server renders UTC; show the person's local time (the title keeps the UTC one).
  function localizeTimes(root) {
    root.querySelectorAll('time[datetime]').forEach(function (el) {
      const text = localTime(el.getAttribute('datetime'));
      if (text && !el.dataset.localized) {
        el.title = el.textContent;
        el.textContent = text;
        el.dataset.localized = '1';
      }
    });
  }

  // A running job's elapsed time ticks between card refreshes.
  function tickElapsed() {
    document.querySelectorAll('[data-elapsed-since]').forEach(function (el) {
      const since = Date.parse(el.getAttribute('data-elapsed-since'));
      if (!isNaN(since)) el.textContent = duration((Date.now() - since) / 1000);
    });
  }

  // After htmx swaps a form back with errors, bring the first one into view.
  function focusFirstError(root) {
    const field = root.querySelector && root.querySelector('.field.has-error');
    if (!field) return;
    field.scrollIntoView({ block: 'center' });
    const input = field.querySelector('input, select');
    if (input) input.focus({ preventScroll: true });
  }

  // Widths come as data-width (percent): the CSP refuses inline style attributes, while
  // setting el.style from our own script is allowed.
  function applyWidths(root) {
    if (!root.querySelectorAll) return;
    root.querySelectorAll('[data-width]').forEach(function (el) {
      const pct = parseFloat(el.getAttribute('data-width'));
      if (!isNaN(pct)) el.style.width = Math.max(0, Math.min(100, pct)) + '%';
    });
  }

  // A button with data-refresh="#target" makes the target refresh itself after its request
  // (instead of hx-on, which would need eval).
  document.addEventListener('htmx:afterRequest', function (evt) {
    const sel = evt.detail.elt && evt.detail.elt.getAttribute &&
      evt.detail.elt.getAttribute('data-refresh');
    if (sel && window.htmx) htmx.trigger(sel, 'refresh');
  });

  // The new-job form's preset select replaces the whole form, whose plan panel plans itself
  // on load. Its change must not also reach the form's "re-plan on change" trigger: that plan
  // of the old values would answer after the new one and overwrite the verdict chip beside
  // Start (an out-of-band swap) with a stale verdict.
  function isolatePreset(root) {
    const sel = root.querySelector && root.querySelector('#f-preset');
    if (!sel || sel.dataset.isolated) return;
    sel.dataset.isolated = '1';
    sel.addEventListener('change', function (evt) { evt.stopPropagation(); });
  }

  // htmx:load fires for the body at start and for every piece of swapped-in content.
  document.addEventListener('htmx:load', function (evt) {
    const el = evt.target;
    applyWidths(el);
    localizeTimes(el);
    isolatePreset(el);
    if (el.id === 'job-form') focusFirstError(el);
  });
  setInterval(tickElapsed, 1000);

  // Notes edited in place (templates/_job_notes.html): Escape cancels, and focus goes back
  // to the Edit button after a save or cancel so the keyboard does not lose its place.
  document.addEventListener('keydown', function (evt) {
    const form = evt.key === 'Escape' && evt.target.closest && evt.target.closest('.notes-form');
    const cancel = form && form.querySelector('[data-cancel]');
    if (cancel) cancel.click();
  });
  // afterSettle, not afterSwap: htmx binds hx-get on swapped-in content only when it settles
  // (20 ms later). Focus given at afterSwap put the keyboard on a button that did nothing yet,
  // so Enter pressed at once was lost (tests/test_runs_browser.py failed 1 run in 3).
  document.addEventListener('htmx:afterSettle', function (evt) {
    const edit = document.getElementById('notes-edit');
    if (evt.detail.target && evt.detail.target.id === 'job-notes' && edit) edit.focus();
  });
})();
