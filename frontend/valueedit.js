// Editing one value in place, in a key's own view: a text area that keeps line breaks,
// Ctrl+Enter saves and Esc cancels, and for JSON a check as it is typed and a Format button
// (pretty-printing only on request: the value is stored as typed).
import { h } from './dom.js';

/** null when `text` does not look like JSON (an object or array); else whether it parses. */
export function jsonCheck(text) {
  const t = text.trim();
  if (!(t.startsWith('{') || t.startsWith('['))) return null;
  try {
    JSON.parse(t);
    return { ok: true };
  } catch (err) {
    return { ok: false, why: err.message };
  }
}

let seq = 0;

/**
 * The editor of value number `index` (0-based). `onSave(text)` resolves once written (or
 * rejects with a message to show); `onCancel()` closes it.
 */
export function valueEditor(value, index, { onSave, onCancel }) {
  const id = `kv-edit-${++seq}`;
  const area = h('textarea', { id, class: 'value-input key-value-input', spellcheck: 'false', autocomplete: 'off', rows: String(Math.min(16, Math.max(3, value.split('\n').length + 1))) });
  area.value = value;
  const check = h('p', { class: 'json-check', 'aria-live': 'polite' });
  const format = h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: 'Format JSON' });
  const save = h('button', { type: 'button', class: 'btn btn-small btn-primary', text: 'Save' });
  const cancel = h('button', { type: 'button', class: 'btn btn-small btn-secondary', text: 'Cancel' });
  const problem = h('p', { class: 'field-error', role: 'alert', hidden: true });
  const update = () => {
    const c = jsonCheck(area.value);
    check.hidden = c === null;
    check.dataset.ok = c?.ok ? 'true' : 'false';
    check.textContent = c === null ? '' : c.ok ? 'Valid JSON' : `Not valid JSON: ${c.why}`;
    format.hidden = !c?.ok;
  };
  area.addEventListener('input', update);
  format.addEventListener('click', () => {
    area.value = JSON.stringify(JSON.parse(area.value.trim()), null, 2);
    update();
    area.focus();
  });
  const doSave = async () => {
    save.disabled = true;
    problem.hidden = true;
    try {
      await onSave(area.value);
    } catch (err) {
      problem.textContent = err instanceof Error ? err.message : String(err);
      problem.hidden = false;
    } finally {
      save.disabled = false;
    }
  };
  save.addEventListener('click', doSave);
  cancel.addEventListener('click', onCancel);
  area.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      doSave();
    } else if (ev.key === 'Escape') {
      ev.preventDefault();
      onCancel();
    }
  });
  update();
  const node = h('div', { class: 'key-value-editor' },
    h('label', { class: 'visually-hidden', for: id, text: `Value ${index + 1}` }),
    area, check, problem,
    h('div', { class: 'editor-actions' }, save, cancel, format,
      h('span', { class: 'editor-hint', text: 'Ctrl+Enter saves · Esc cancels' })));
  node._area = area;
  return node;
}
