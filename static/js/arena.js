// The arena review's keys: ←/1 left is better, →/2 right is better, ↑/3 both good,
// ↓/4 both bad. A key clicks its button, so the post is htmx's, exactly as a click; while a
// verdict is on its way the buttons are disabled (hx-disabled-elt) and a key does nothing.
(function () {
  'use strict';
  const KEYS = {
    ArrowLeft: 'left', '1': 'left',
    ArrowRight: 'right', '2': 'right',
    ArrowUp: 'both_good', '3': 'both_good',
    ArrowDown: 'both_bad', '4': 'both_bad',
  };

  document.addEventListener('keydown', function (evt) {
    if (evt.altKey || evt.ctrlKey || evt.metaKey || evt.shiftKey || evt.repeat) return;
    const target = evt.target;
    if (target && target.closest && target.closest('input, textarea, select, [contenteditable]')) return;
    const verdict = KEYS[evt.key];
    if (!verdict) return;
    const button = document.querySelector(
      '#arena-verdicts button[data-verdict="' + verdict + '"]');
    if (!button || button.disabled || button.closest('fieldset[disabled]')) return;
    evt.preventDefault();  // no page scroll on the arrows
    button.click();
  });
})();
