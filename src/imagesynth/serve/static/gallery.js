// The gallery (GET /api/history): filters, "load more", trash with restore/empty, the image
// detail dialog (recipe, reuse, send to img2img/inpaint, reproduce, download, delete), the
// "recent" column beside the forms, and the picker that image fields open.

import { api, el, imageURL, notify, thumbURL, timeAgo } from './core.js';
import { differ, watchJob } from './jobs.js';

/** Set by app.js: reuse(recipe, image), sendTo(tab, ref); `changed` listeners refresh views. */
export const hooks = { reuse: null, sendTo: null, changed: [] };
export const galleryChanged = () => hooks.changed.forEach((fn) => fn());

const PAGE = 48;

function card(image, onclick) {
  return el('figure', { class: 'card', 'data-testid': 'gallery-item', dataset: { imageId: image.id },
                        tabindex: 0, title: image.prompt, onclick,
                        onkeydown: (e) => { if (e.key === 'Enter') onclick(); } },
            el('div', { class: 'frame' }, el('img', { src: thumbURL(image.id), alt: image.prompt,
                                                     loading: 'lazy' })),
            el('figcaption', {}, el('span', { class: 'prompt', text: image.prompt || '(no prompt)' }),
               el('span', { class: 'muted', text: `${image.model} · seed ${image.seed ?? '–'}` })));
}

export class Gallery {
  constructor(root) {
    this.root = root;
    this.trashed = false;
    this.offset = 0;
    this.query = el('input', { type: 'search', placeholder: 'Filter by prompt…',
                               'aria-label': 'Filter by prompt', 'data-testid': 'gallery-filter' });
    this.model = el('select', { 'aria-label': 'Filter by model', 'data-testid': 'gallery-model' },
                    el('option', { value: '', text: 'All models' }));
    this.count = el('span', { class: 'muted', 'data-testid': 'gallery-count' });
    this.emptyButton = el('button', { type: 'button', class: 'small danger', hidden: true,
                                      'data-testid': 'empty-trash', text: 'Empty trash',
                                      onclick: () => this.emptyTrash() });
    this.views = el('div', { class: 'segmented compact' },
                    ...[['Gallery', false], ['Trash', true]].map(([text, trashed]) => el('button', {
                      type: 'button', text, 'data-testid': trashed ? 'show-trash' : 'show-gallery',
                      class: trashed ? '' : 'on',
                      onclick: (e) => { this.trashed = trashed;
                                        [...this.views.children].forEach((b) => b.classList.toggle('on', b === e.target));
                                        this.load(); } })));
    this.grid = el('div', { class: 'grid', 'data-testid': 'gallery-grid' });
    this.more = el('button', { type: 'button', class: 'more', hidden: true, text: 'Load more',
                               onclick: () => this.load(false) });
    root.replaceChildren(el('div', { class: 'toolbar' }, el('h2', { text: 'Gallery' }), this.query,
                            this.model, this.views, this.count, el('span', { class: 'spacer' }),
                            this.emptyButton), this.grid, this.more);
    let debounce = null;
    this.query.addEventListener('input', () => { clearTimeout(debounce);
                                                 debounce = setTimeout(() => this.load(), 250); });
    this.model.addEventListener('change', () => this.load());
    hooks.changed.push(() => { if (!root.closest('[hidden]')) this.load(); });
  }

  async load(reset = true) {
    if (reset) this.offset = 0;
    const params = new URLSearchParams({ q: this.query.value, model: this.model.value,
                                         limit: PAGE, offset: this.offset });
    if (this.trashed) params.set('trashed', 'true');
    let data;
    try { data = await api(`/api/history?${params}`); } catch (error) {
      this.count.textContent = error.message;
      return;
    }
    const chosen = this.model.value;
    this.model.replaceChildren(el('option', { value: '', text: 'All models' }),
                               ...data.models.map((m) => el('option', { value: m, text: m })));
    this.model.value = data.models.includes(chosen) ? chosen : '';
    const cards = data.images.map((image) => card(image, () => openDetail(image.id)));
    if (reset) this.grid.replaceChildren(...cards); else this.grid.append(...cards);
    this.offset += data.images.length;
    this.more.hidden = this.offset >= data.total;
    this.count.textContent = `${data.total} image${data.total === 1 ? '' : 's'}${this.trashed ? ' in the trash' : ''}`;
    this.emptyButton.hidden = !this.trashed || data.total === 0;
    if (!data.total) {
      const filtered = this.query.value || this.model.value;
      this.grid.replaceChildren(el('p', { class: 'empty', text: filtered ? 'No image matches the filter.'
        : this.trashed ? 'The trash is empty.' : 'No images yet: generate some, and they appear here.' }));
    }
  }

  async emptyTrash() {
    if (!window.confirm('Delete every image in the trash for good? This cannot be undone.')) return;
    const { deleted } = await api('/api/trash/empty', { method: 'POST' });
    notify(`Deleted ${deleted} image(s) for good`);
    galleryChanged();
  }
}

/** The few newest images beside the forms. */
export class Recent {
  constructor(root, openGallery) {
    this.grid = el('div', { class: 'recent-grid', 'data-testid': 'recent' });
    root.replaceChildren(el('div', { class: 'out-head' }, el('h2', { text: 'Recent' }),
                            el('button', { type: 'button', class: 'link', text: 'Gallery →',
                                           onclick: openGallery })), this.grid);
    hooks.changed.push(() => this.load());
  }

  async load() {
    let data;
    try { data = await api('/api/history?limit=18'); } catch { return; }
    this.grid.replaceChildren(...data.images.map((image) => el('img', {
      src: thumbURL(image.id), alt: image.prompt, title: image.prompt, tabindex: 0,
      'data-testid': 'recent-item', dataset: { imageId: image.id },
      onclick: () => openDetail(image.id) })));
    if (!data.images.length) this.grid.append(el('p', { class: 'muted', text: 'Nothing yet.' }));
  }
}

let dialog = null;

function detailDialog() {
  if (!dialog) {
    dialog = el('dialog', { class: 'detail', 'data-testid': 'detail' });
    document.body.append(dialog);
    dialog.addEventListener('click', (event) => { if (event.target === dialog) dialog.close(); });
  }
  return dialog;
}

const RECIPE_ROWS = [['model', 'Model'], ['seed', 'Seed'], ['steps', 'Steps'], ['sampler', 'Sampler'],
                     ['guidance_scale', 'Guidance'], ['negative_prompt', 'Negative'],
                     ['strength', 'Strength'], ['drawer', 'Drawer'], ['scorer', 'Scorer']];

/** Open the detail dialog of gallery image `id`. */
export async function openDetail(id) {
  let image;
  try { image = await api(`/api/images/${id}/recipe`); } catch (error) {
    notify('Cannot open the image', { kind: 'error', lines: [error.message] });
    return;
  }
  const recipe = image.recipe || {};
  const box = detailDialog();
  const status = el('div', { class: 'reproduce-status', 'data-testid': 'reproduce-status' });
  const action = (text, name, fn, cls = '') => el('button', { type: 'button', class: `small ${cls}`,
                                                             text, 'data-action': name, onclick: fn });
  const ref = `image:${id}`;
  const buttons = image.trashed ? [
    action('Restore', 'restore', async () => {
      await api(`/api/images/${id}/restore`, { method: 'POST' });
      box.close(); notify('Restored to the gallery'); galleryChanged();
    }, 'primary'),
  ] : [
    action('Reuse settings', 'reuse', () => { box.close(); hooks.reuse(recipe, image); }, 'primary'),
    action('Send to img2img', 'img2img', () => { box.close(); hooks.sendTo('img2img', ref); }),
    action('Send to inpaint', 'inpaint', () => { box.close(); hooks.sendTo('inpaint', ref); }),
    action('Reproduce', 'reproduce', () => reproduce(image, status)),
  ];
  buttons.push(el('a', { class: 'button small', href: `${imageURL(id)}?download=1`,
                         download: `imagesynth-${id}.png`, 'data-action': 'download',
                         text: 'Download' }));
  if (!image.trashed) {
    buttons.push(action('Delete', 'delete', async () => {
      await api(`/api/images/${id}`, { method: 'DELETE' });
      box.close();
      notify('Moved to the trash', { actions: [['Undo', async () => {
        await api(`/api/images/${id}/restore`, { method: 'POST' }); galleryChanged(); }]] });
      galleryChanged();
    }, 'danger'));
  }
  const rows = RECIPE_ROWS.filter(([key]) => recipe[key] !== undefined && recipe[key] !== '')
    .map(([key, name]) => [name, String(recipe[key])]);
  rows.push(['Size', `${image.width}×${image.height}`], ['Created', timeAgo(image.created)]);
  box.replaceChildren(
    el('div', { class: 'detail-head' },
       el('h2', { text: image.trashed ? 'In the trash' : 'Image' }),
       el('button', { type: 'button', class: 'icon', text: '×', 'aria-label': 'Close',
                      onclick: () => box.close() })),
    el('div', { class: 'detail-body' },
       el('div', { class: 'detail-image' }, el('img', { src: imageURL(id), alt: image.prompt })),
       el('div', { class: 'detail-info' },
          el('p', { class: 'detail-prompt', text: image.prompt || '(no prompt)' }),
          el('dl', {}, rows.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])),
          el('div', { class: 'actions' }, buttons), status,
          el('details', { class: 'recipe', open: true }, el('summary', { text: 'Full recipe' }),
             el('pre', { 'data-testid': 'recipe', text: JSON.stringify(recipe, null, 2) })))));
  if (!box.open) box.showModal();
}

async function reproduce(image, status) {
  status.className = 'reproduce-status';
  status.textContent = 'regenerating…';
  const body = {};
  try {
    const job = await api(`/api/jobs/${image.job_id}`);
    for (const key of ['init_image', 'mask']) if (job.config && job.config[key]) body[key] = job.config[key];
    if (job.config && (job.config.control_image || []).length) body.control_image = job.config.control_image;
  } catch { /* the job may be gone; the recipe alone may suffice */ }
  let queued;
  try {
    queued = await api(`/api/images/${image.id}/reproduce`, { method: 'POST', body });
  } catch (error) {
    status.textContent = `${error.message}${error.fix ? ` (${error.fix})` : ''}`;
    status.classList.add('bad');
    return;
  }
  watchJob(queued.id, {
    onProgress: (job) => { status.textContent = job.state === 'queued' ? 'queued…' : 'regenerating…'; },
    onEnd: (job) => {
      if (job.state !== 'done') {
        status.textContent = `reproduce ${job.state}: ${(job.error && job.error.message) || ''}`;
        status.classList.add('bad');
        return;
      }
      const r = job.result;
      status.textContent = r.identical ? 'identical: every pixel matches'
        : `${differ(r.pixels_differ)} (max difference ${r.max_difference})`;
      status.classList.add(r.identical ? 'good' : 'bad');
      for (const warning of r.warnings || []) status.append(el('div', { class: 'muted', text: warning }));
    },
  });
}

/** A dialog to choose gallery images; resolves to a list of `image:ID` (empty when closed). */
export function pickFromGallery({ multiple = false } = {}) {
  return new Promise((resolve) => {
    const chosen = new Set();
    const grid = el('div', { class: 'grid small' });
    const query = el('input', { type: 'search', placeholder: 'Filter by prompt…' });
    const add = el('button', { type: 'button', class: 'primary small', hidden: !multiple,
                               text: 'Add selected' });
    const picker = el('dialog', { class: 'picker', 'data-testid': 'picker' },
      el('div', { class: 'detail-head' }, el('h2', { text: 'Choose from the gallery' }), query,
         add, el('button', { type: 'button', class: 'icon', text: '×', onclick: () => picker.close() })),
      grid);
    let result = [];
    const finish = (refs) => { result = refs; picker.close(); };
    const load = async () => {
      const data = await api(`/api/history?limit=120&q=${encodeURIComponent(query.value)}`);
      grid.replaceChildren(...data.images.map((image) => {
        const item = card(image, () => {
          if (!multiple) { finish([`image:${image.id}`]); return; }
          if (chosen.has(image.id)) chosen.delete(image.id); else chosen.add(image.id);
          item.classList.toggle('selected', chosen.has(image.id));
          add.textContent = `Add ${chosen.size} selected`;
        });
        return item;
      }));
      if (!data.images.length) grid.append(el('p', { class: 'empty', text: 'No images.' }));
    };
    add.addEventListener('click', () => finish([...chosen].map((id) => `image:${id}`)));
    query.addEventListener('input', load);
    picker.addEventListener('close', () => { picker.remove(); resolve(result); });
    document.body.append(picker);
    picker.showModal();
    load();
  });
}
