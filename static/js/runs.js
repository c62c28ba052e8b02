// The jobs list: runs picked for comparison, and the filter form kept in step with the URL.
//
// The table body re-renders every 3 s and on every filter change, so a checkbox cannot hold
// the selection: it lives in sessionStorage and is put back on each swap. That also keeps
// runs picked on another page or under another filter.
(function () {
  'use strict';

  const KEY = 'prospect.compare';
  const form = document.getElementById('compare-form');
  const filters = document.getElementById('job-filters');
  if (!form || !filters) return;
  const note = document.getElementById('compare-note');
  const clear = document.getElementById('compare-clear');

  function load() {
    try {
      const ids = JSON.parse(sessionStorage.getItem(KEY) || '[]');
      return Array.isArray(ids) ? ids.filter(Number.isInteger) : [];
    } catch (e) { return []; }
  }
  let selected = load();

  function save() {
    try { sessionStorage.setItem(KEY, JSON.stringify(selected)); } catch (e) { /* private */ }
  }

  function show() {
    document.querySelectorAll('#jobs-body input[name="ids"]').forEach(function (box) {
      box.checked = selected.indexOf(Number(box.value)) >= 0;
    });
    const n = selected.length;
    note.textContent = n === 0 ? 'Tick two or more runs to compare them.'
      : n === 1 ? '1 run selected (#' + selected[0] + '): tick one more.'
        : n + ' runs selected: #' + selected.join(', #');
    clear.hidden = n === 0;
  }

  document.addEventListener('change', function (evt) {
    const box = evt.target;
    if (!box.matches || !box.matches('#jobs-body input[name="ids"]')) return;
    const id = Number(box.value);
    selected = selected.filter(function (x) { return x !== id; });
    if (box.checked) selected.push(id);
    save();
    show();
  });

  clear.addEventListener('click', function () {
    selected = [];
    save();
    show();
  });

  form.addEventListener('submit', function (evt) {
    evt.preventDefault();
    if (selected.length < 2) {
      note.textContent = 'Pick at least two runs: tick them in the first column.';
      return;
    }
    window.location.href = '/compare?ids=' + selected.join(',');
  });

  // Shorter, shareable URLs: leave out empty filters and the default sort.
  document.addEventListener('htmx:configRequest', function (evt) {
    if (evt.detail.elt !== filters) return;
    const p = evt.detail.parameters;
    Object.keys(p).forEach(function (k) { if (p[k] === '') delete p[k]; });
    if (p.sort === 'created') delete p.sort;
  });

  // After back/forward htmx restores the page as it was saved, which may be before the
  // person changed the form: the URL says which filters the table shows.
  function formFromUrl() {
    const form = document.getElementById('job-filters');
    if (!form) return;
    const params = new URLSearchParams(window.location.search);
    form.querySelectorAll('[name]').forEach(function (el) {
      el.value = params.get(el.name) || el.getAttribute('data-default') || '';
    });
  }
  document.addEventListener('htmx:historyRestore', function () { formFromUrl(); show(); });
  document.addEventListener('htmx:load', show);
  show();
})();
