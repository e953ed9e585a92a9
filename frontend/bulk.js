// Bulk operations on what the list shows: delete every key under the prefix (typed
// confirmation with the count, progress as it goes), export it as JSON lines, and import an
// export (the node merges it under the normal rule).
import { api } from './api.js';
import { groupDigits } from './format.js';
import { messageOf, notify } from './notices.js';

const IMPORT_CHUNK = 1000; // lines per request, the node's limit
const DELETE_AT_ONCE = 4;

const pairs = (n) => `${groupDigits(n)} ${n === 1 ? 'pair' : 'pairs'}`;
const $ = (sel) => document.querySelector(sel);

/**
 * Wires the buttons. `prefix()` is the list's prefix now; `done()` reloads the list after a
 * change.
 */
export function setupBulk({ prefix, done }) {
  const el = {
    del: $('#delete-prefix-btn'),
    exp: $('#export-btn'),
    imp: $('#import-btn'),
    file: $('#import-file'),
    dialog: $('#prefix-dialog'),
    title: $('#prefix-title'),
    text: $('#prefix-text'),
    input: $('#prefix-input'),
    ok: $('#prefix-ok'),
  };
  const WORD = 'delete';
  el.input.addEventListener('input', () => { el.ok.disabled = el.input.value.trim().toLowerCase() !== WORD; });
  el.input.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter') return;
    ev.preventDefault(); // the form's first button is Cancel
    if (!el.ok.disabled) el.dialog.close('ok');
  });

  el.del.addEventListener('click', async () => {
    const p = prefix();
    if (!p) return;
    let total;
    try {
      total = (await api.list({ prefix: p, limit: 1, count: true })).total ?? 0;
    } catch (err) {
      notify(`Could not count the keys under “${p}”. ${messageOf(err)}`, 'error', { topic: 'delete-prefix' });
      return;
    }
    el.title.textContent = `Delete every key under “${p}”?`;
    el.text.textContent = `${pairs(total)} will be deleted on every node. This cannot be undone.`;
    el.ok.textContent = `Delete ${pairs(total)}`;
    el.input.value = '';
    el.ok.disabled = true;
    el.dialog.returnValue = '';
    const ok = await new Promise((resolve) => {
      el.dialog.addEventListener('close', () => resolve(el.dialog.returnValue === 'ok' && el.input.value.trim().toLowerCase() === WORD), { once: true });
      el.dialog.showModal();
      el.input.focus();
    });
    if (!ok) {
      el.del.focus();
      return;
    }
    el.del.disabled = true;
    const progress = notify(`Deleting the keys under “${p}”…`, 'info', { timeout: -1 });
    const say = (text) => { progress.querySelector('.msg-text').textContent = text; };
    try {
      const { deleted, kept } = await deleteUnder(p, (d, k) => say(`Deleting the keys under “${p}”… ${groupDigits(d)} of about ${groupDigits(total)} deleted${k ? `, ${groupDigits(k)} kept (changed meanwhile)` : ''}.`));
      progress.remove();
      notify(`Deleted ${pairs(deleted)} under “${p}”${kept ? `; ${pairs(kept)} changed meanwhile and were kept` : ''}.`, 'success', { topic: 'delete-prefix' });
    } catch (err) {
      progress.remove();
      notify(`Could not delete every key under “${p}”. ${messageOf(err)}`, 'error', { topic: 'delete-prefix' });
    } finally {
      el.del.disabled = false;
      done();
    }
  });

  el.exp.addEventListener('click', async () => {
    const p = prefix();
    el.exp.disabled = true;
    try {
      const text = await api.exportText(p);
      const name = `kvsync-export${p ? '-' + p.replace(/[^\w.-]+/g, '_') : ''}.ndjson`;
      const url = URL.createObjectURL(new Blob([text], { type: 'application/x-ndjson' }));
      const a = document.createElement('a');
      a.href = url;
      a.download = name;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      const n = text.split('\n').filter((l) => l.trim()).length;
      notify(`Exported ${pairs(n)} to ${name}.`, 'success', { topic: 'export' });
    } catch (err) {
      notify(`Could not export. ${messageOf(err)}`, 'error', { topic: 'export' });
    } finally {
      el.exp.disabled = false;
    }
  });

  el.imp.addEventListener('click', () => el.file.click());
  el.file.addEventListener('change', async () => {
    const file = el.file.files?.[0];
    el.file.value = '';
    if (!file) return;
    el.imp.disabled = true;
    const progress = notify(`Importing ${file.name}…`, 'info', { timeout: -1 });
    try {
      const lines = (await file.text()).split('\n').filter((l) => l.trim());
      let changed = 0;
      let unchanged = 0;
      for (let i = 0; i < lines.length; i += IMPORT_CHUNK) {
        const res = await api.importLines(lines.slice(i, i + IMPORT_CHUNK).join('\n') + '\n');
        changed += res?.changed ?? 0;
        unchanged += res?.unchanged ?? 0;
        progress.querySelector('.msg-text').textContent = `Importing ${file.name}… ${groupDigits(Math.min(lines.length, i + IMPORT_CHUNK))} of ${groupDigits(lines.length)} lines.`;
      }
      progress.remove();
      notify(`Imported ${file.name}: ${pairs(changed)} changed, ${groupDigits(unchanged)} already as new or newer.`, 'success', { topic: 'import' });
      done();
    } catch (err) {
      progress.remove();
      notify(`Could not import ${file.name}. ${messageOf(err)}${/line/.test(messageOf(err)) ? '' : ' Nothing after the failed part was imported.'}`, 'error', { topic: 'import' });
    } finally {
      el.imp.disabled = false;
    }
  });

  return {
    /** Shows "Delete all under…" only for a prefix. */
    update(p, searching) {
      const hidden = !p || searching;
      if (el.del.hidden !== hidden) el.del.hidden = hidden;
      const label = p ? `Delete every key under ${p}` : 'Delete every key under the prefix';
      if (el.del.getAttribute('aria-label') !== label) el.del.setAttribute('aria-label', label);
    },
  };
}

/** Deletes the keys under `prefix` page by page, each only if unchanged since it was listed. */
async function deleteUnder(prefix, onProgress) {
  let after = null;
  let deleted = 0;
  let kept = 0;
  for (;;) {
    const res = await api.list({ prefix, limit: 500, after });
    const page = res.pairs || [];
    for (let i = 0; i < page.length; i += DELETE_AT_ONCE) {
      const done = await Promise.all(page.slice(i, i + DELETE_AT_ONCE).map((p) => api.remove(p.key, p.etag)));
      for (const r of done) {
        if (r.ok) deleted += 1;
        else kept += 1;
      }
      onProgress(deleted, kept);
    }
    after = res.next ?? null;
    if (after === null) return { deleted, kept };
  }
}
