// Forms built from GET /api/schema: one widget per config field (type, default, help, choices),
// model selects filtered by family with the model's card, image pickers (upload or gallery),
// and field-level errors (the server's `error.field`, `message` and `fix`).

import { el, fieldError, readDataURL, refURL, state, upload } from './core.js';
import { pickFromGallery } from './gallery.js';

const LABELS = {
  n: 'Images', negative: 'Negative prompt', guidance: 'Guidance (CFG)', size: 'Size (px)',
  init_image: 'Init image', mask_blur: 'Mask blur (px)', outpaint: 'Outpaint borders (px)',
  scorer: 'Scorer (CLIP)', held_out_scorer: 'Held-out scorer', learning_rate: 'Learning rate',
  lr_schedule: 'LR schedule', image_prompts: 'Image prompts', init_colour: 'Init colour',
  kid_subset_size: 'KID subset size', kid_subsets: 'KID subsets', top: 'Results',
  generated: 'Generated images (folder)', reference: 'Reference images (folder)',
  extractor: 'Feature extractor', image: 'Query image', query: 'Text query', tv_weight: 'TV weight',
  diffusion_model: 'Diffusion model', diffusion_guidance: 'Diffusion guidance',
  edit_to: 'Edit toward', eval_every: 'Score every N steps', frame_every: 'Frame every N steps',
  control_image: 'Control map', control_model: 'ControlNet', control_scale: 'Control scale',
  control_start: 'Control start', control_end: 'Control end', guidance_rescale: 'CFG rescale',
  clip_guidance: 'CLIP guidance', clip_model: 'CLIP model (guidance)', clip_cutouts: 'CLIP cutouts',
};
/** Which registry family a model field lists (the schema's `families` take precedence). */
const FAMILIES = {
  'generate.model': 'diffusion', 'dream.scorer': 'clip', 'dream.held_out_scorer': 'clip',
  'dream.decoder': 'autoencoder', 'dream.diffusion_model': 'diffusion',
  'classify.model': 'clip', 'search.model': 'clip',
};
/** Error field names that differ from the config field they concern. */
const ALIASES = { lr: 'learning_rate', 'dream.size': 'width' };
const TEXTAREAS = new Set(['prompt', 'negative', 'labels']);

export const label = (name) => LABELS[name] ||
  name.charAt(0).toUpperCase() + name.slice(1).replaceAll('_', ' ');

let uid = 0;

export class Form {
  /**
   * @param root a <form> element
   * @param kind job kind in the schema
   * @param options {fields, advanced, groups: [{title, fields, testid}], submitLabel,
   *                 widgets: {name: factory}, segmented: [...]}
   */
  constructor(root, kind, options) {
    this.root = root;
    this.kind = kind;
    this.options = options;
    this.widgets = new Map();
    this.specs = Object.fromEntries(state.schema.kinds[kind].fields.map((f) => [f.name, f]));
    this.top = el('div', { class: 'form-error', role: 'alert', hidden: true,
                           'data-testid': 'form-error' });
    this.main = el('div', { class: 'fields' });
    this.more = el('div', { class: 'fields' });
    this.details = el('details', { class: 'advanced' },
                      el('summary', { text: 'More options' }), this.more);
    this.button = el('button', { type: 'submit', class: 'primary', 'data-testid': 'submit',
                                 text: options.submitLabel || 'Run' });
    root.replaceChildren(this.top, this.main);
    for (const name of options.fields) this.add(name, this.main);
    for (const group of options.groups || []) {  // a folded group of related fields
      const fields = el('div', { class: 'fields' });
      root.append(el('details', { class: 'advanced group', 'data-testid': group.testid },
                     el('summary', { text: group.title }), fields));
      for (const name of group.fields) this.add(name, fields);
    }
    if ((options.advanced || []).length) {
      for (const name of options.advanced) this.add(name, this.more);
      root.append(this.details);
    }
    root.append(el('div', { class: 'submit-row' }, this.button,
                        el('span', { class: 'kbd-hint' }, el('kbd', { text: 'Ctrl' }), '+',
                           el('kbd', { text: 'Enter' }))));
    root.noValidate = true;
    root.addEventListener('submit', (event) => {
      event.preventDefault();
      if (this.onsubmit) this.onsubmit();
    });
    this.linkModelDefaults();
  }

  add(name, parent) {
    const spec = this.specs[name] || { name, type: 'none', help: '', optional: true };
    const id = `f${++uid}-${name}`;
    const factory = (this.options.widgets || {})[name] || widgetFor(this.kind, spec, this);
    const widget = factory(spec, this, id);
    widget.name = name;
    widget.spec = spec;
    widget.visible = true;
    widget.error = el('div', { class: 'field-error', hidden: true, 'data-testid': 'field-error' });
    const head = widget.noLabel ? null
      : el('label', { class: 'field-label', for: widget.labelFor === false ? null : id },
           widget.label || label(name));
    widget.row = el('div', { class: `field ${widget.wide ? 'full' : 'half'}`,
                             dataset: { field: name } },
                    head, widget.node,
                    (widget.help ?? spec.help) && !widget.noHelp
                      ? el('div', { class: 'help', text: widget.help ?? spec.help }) : null,
                    widget.error);
    parent.append(widget.row);
    this.widgets.set(name, widget);
    return widget;
  }

  get(name) { return this.widgets.get(name); }

  set(name, value) {
    const widget = this.widgets.get(name);
    return widget ? widget.set(value) !== false : false;
  }

  setVisible(name, visible) {
    const widget = this.widgets.get(name);
    if (!widget) return;
    widget.visible = visible;
    widget.row.hidden = !visible;
  }

  /** The config to send: visible fields only; `undefined` values (unset optionals) omitted. */
  async collect() {
    const config = {};
    for (const widget of this.widgets.values()) {
      if (!widget.visible || !widget.get) continue;
      const value = await widget.get();
      if (value !== undefined) config[widget.name] = value;
    }
    return config;
  }

  clearErrors() {
    this.top.hidden = true;
    for (const widget of this.widgets.values()) {
      widget.error.hidden = true;
      widget.row.classList.remove('invalid');
    }
  }

  /** Show an ApiError next to its field, or at the top when no visible field matches. */
  showError(error) {
    const raw = String(error.field || '').replace(/\[\d+\]$/, '').replace(/^--/, '')
      .replaceAll('-', '_');
    const name = ALIASES[`${this.kind}.${raw}`] || ALIASES[raw] || raw;
    const widget = this.widgets.get(name);
    const message = error.message || String(error);
    const fix = error.fix ? el('div', { class: 'fix', text: `Fix: ${error.fix}` }) : null;
    if (widget && widget.visible) {
      widget.error.replaceChildren(el('div', { text: message }), fix || '');
      widget.error.hidden = false;
      widget.row.classList.add('invalid');
      const folded = widget.row.closest('details');
      if (folded) folded.open = true;
      widget.row.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    } else {
      const where = error.field ? `${error.field}: ` : '';
      this.top.replaceChildren(el('div', { text: `${where}${message}` }), fix || '');
      this.top.hidden = false;
      this.top.scrollIntoView({ block: 'nearest' });
    }
  }

  /** Placeholders of steps/guidance/sampler/size follow the chosen diffusion model's defaults. */
  linkModelDefaults() {
    const model = this.widgets.get('model');
    if (!model || !model.onchange || FAMILIES[`${this.kind}.model`] !== 'diffusion') return;
    const update = (info) => {
      if (!info) return;
      const steps = this.widgets.get('steps');
      const guidance = this.widgets.get('guidance');
      const size = this.widgets.get('size');
      const sampler = this.widgets.get('sampler');
      if (steps) steps.input.placeholder = `default: ${info.default_steps ?? '?'}`;
      if (guidance) guidance.input.placeholder = `default: ${info.default_guidance ?? '?'}`;
      if (size) size.input.placeholder = `${info.image_size ?? 'model size'}`;
      if (sampler) {
        sampler.input.options[0].textContent = 'model default';
      }
    };
    model.onchange(update);
    update(model.info());
  }
}

function widgetFor(kind, spec, form) {
  const key = `${kind}.${spec.name}`;
  if (CONTROL_WIDGETS[spec.name] && kind === 'generate') return CONTROL_WIDGETS[spec.name];
  if (spec.kind === 'model') {
    const empty = spec.name === 'clip_model' ? 'none' : '(default)';
    return (s, f, id) => modelWidget(s, id, spec.families || FAMILIES[key], empty);
  }
  if (spec.kind === 'image') return (s, f, id) => imageWidget(s, f, id);
  if (spec.kind === 'images') {
    return (s, f, id) => imageListWidget(s, f, id, { folder: kind === 'evaluate' });
  }
  if (key === 'evaluate.extractor') return (s, f, id) => extractorWidget(s, id);
  if (spec.choices && (form.options.segmented || []).includes(spec.name)) {
    return (s, f, id) => segmentedWidget(s, id, form.options.descriptions || {});
  }
  if (spec.choices) return (s, f, id) => selectWidget(s, id, spec.choices);
  if (spec.type === 'boolean') return (s, f, id) => checkboxWidget(s, id);
  if (spec.type === 'integer' || spec.type === 'number') return (s, f, id) => numberWidget(s, id);
  if (spec.type === 'tuple4') return (s, f, id) => bordersWidget(s, id);
  if (spec.type === 'list') return (s, f, id) => linesWidget(s, id);
  return (s, f, id) => textWidget(s, id);
}

function textWidget(spec, id) {
  const multiline = TEXTAREAS.has(spec.name);
  const input = multiline
    ? el('textarea', { id, name: spec.name, rows: spec.name === 'prompt' ? 3 : 2 })
    : el('input', { id, name: spec.name, type: 'text', autocomplete: 'off' });
  const reset = () => { input.value = spec.default ?? ''; };
  reset();
  if (spec.help) input.placeholder = spec.help;
  return {
    node: input, input, wide: true, reset, noHelp: Boolean(spec.help),
    get: () => {
      const value = input.value;
      if (spec.optional && value.trim() === '') return undefined;
      if (!spec.required && !spec.optional && value === (spec.default ?? '')) return undefined;
      return value;
    },
    set: (value) => { input.value = value ?? ''; },
  };
}

function numberWidget(spec, id) {
  const integer = spec.type === 'integer';
  const input = el('input', { id, name: spec.name, type: 'number', step: integer ? '1' : 'any',
                              inputmode: integer ? 'numeric' : 'decimal' });
  const reset = () => { input.value = spec.default ?? ''; };
  reset();
  if (spec.optional && spec.default === null) input.placeholder = 'default';
  return {
    node: input, input, reset,
    get: () => {
      const text = input.value.trim();
      if (text === '') {
        if (input.validity.badInput) throw fieldError(spec.name, 'is not a number');
        return spec.optional || !spec.required ? undefined : null;
      }
      const value = Number(text);
      if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        throw fieldError(spec.name, integer ? 'must be a whole number' : 'must be a number');
      }
      return value;
    },
    set: (value) => { input.value = value ?? ''; },
  };
}

function checkboxWidget(spec, id) {
  const input = el('input', { id, name: spec.name, type: 'checkbox' });
  const reset = () => { input.checked = Boolean(spec.default); };
  reset();
  return { node: el('div', { class: 'check' }, input), input, reset,
           get: () => input.checked, set: (value) => { input.checked = Boolean(value); } };
}

function selectWidget(spec, id, choices, defaultText = '(default)') {
  const input = el('select', { id, name: spec.name });
  if (spec.optional) input.append(el('option', { value: '', text: defaultText }));
  for (const choice of choices) input.append(el('option', { value: choice, text: choice }));
  const reset = () => { input.value = spec.default ?? ''; };
  reset();
  return {
    node: input, input, reset,
    get: () => (input.value === '' ? undefined : input.value),
    set: (value) => {
      if (value !== null && value !== undefined && !choices.includes(value)) return false;
      input.value = value ?? '';
      return true;
    },
  };
}

function segmentedWidget(spec, id, descriptions) {
  const group = el('div', { class: 'segmented', role: 'radiogroup', id });
  const note = el('div', { class: 'help' });
  const listeners = [];
  for (const choice of spec.choices) {
    const radio = el('input', { type: 'radio', name: `${id}-radio`, value: choice });
    radio.addEventListener('change', () => { note.textContent = descriptions[choice] || '';
                                             listeners.forEach((fn) => fn(choice)); });
    group.append(el('label', {}, radio, el('span', { text: choice })));
  }
  const widget = {
    node: el('div', {}, group, note), wide: true, labelFor: false, noHelp: true,
    get: () => widget.value(),
    value: () => (group.querySelector('input:checked') || {}).value,
    set: (value) => {
      const radio = [...group.querySelectorAll('input')].find((r) => r.value === value);
      if (!radio) return false;
      radio.checked = true;
      radio.dispatchEvent(new Event('change'));
      return true;
    },
    onchange: (fn) => listeners.push(fn),
  };
  widget.reset = () => widget.set(spec.default);
  queueMicrotask(widget.reset);
  return widget;
}

/** A select of the models of `family` (a name or a list of names), with each one's card. */
function modelWidget(spec, id, family, empty = '(default)') {
  const families = family ? [family].flat() : null;
  const models = state.models.filter((m) => !families || families.includes(m.family));
  const names = models.map((m) => m.name);
  family = families ? families[0] : family;
  const select = el('select', { id, name: spec.name, 'data-family': family || '' });
  if (spec.optional) select.append(el('option', { value: '', text: empty }));
  for (const m of models) select.append(el('option', { value: m.name, text: m.name }));
  const infoLine = el('div', { class: 'model-info' });
  const card = el('pre', { class: 'card-text' });
  const details = el('details', { class: 'model-card' }, el('summary', { text: 'Model card' }),
                     card);
  const listeners = [];
  const info = () => models.find((m) => m.name === select.value) || null;
  const show = () => {
    const m = info();
    details.hidden = !m || !m.card;
    card.textContent = m ? m.card : '';
    const base = m && m.base_sha256 &&
      (state.models.find((o) => o.sha256 === m.base_sha256 && o.family !== m.family) || {}).name;
    infoLine.textContent = m ? [m.family, m.condition && `${m.condition} maps`,
                                base && `for ${base}`, m.image_size && `${m.image_size} px`,
                                m.default_steps && `${m.default_steps} steps`, m.default_sampler,
                                m.default_guidance !== null && m.default_guidance !== undefined &&
                                  `CFG ${m.default_guidance}`, m.source].filter(Boolean).join(' · ')
      : (spec.optional ? (empty === '(default)' ? 'the studio picks its default' : 'off') : '');
    listeners.forEach((fn) => fn(m));
  };
  const reset = () => {
    let value = spec.default ?? '';
    if (family === 'diffusion' && spec.name === 'model' && names.includes(state.defaultModel)) {
      value = state.defaultModel;  // the server's --model
    }
    if (value && !names.includes(value)) value = spec.optional ? '' : (names[0] || '');
    if (!value && !spec.optional) value = names[0] || '';
    select.value = value;
    show();
  };
  select.addEventListener('change', show);
  reset();
  if (!models.length) infoLine.textContent = `no ${family} model is installed`;
  return {
    node: el('div', { class: 'model-field' }, select, infoLine, details), input: select,
    wide: true, reset, noHelp: true, info, onchange: (fn) => listeners.push(fn),
    get: () => (select.value === '' ? undefined : select.value),
    set: (value) => {
      if (value && !names.includes(value)) return false;
      select.value = value || (spec.optional ? '' : select.value);
      show();
      return true;
    },
  };
}

function extractorWidget(spec, id) {
  const clips = state.models.filter((m) => m.family === 'clip').map((m) => `clip:${m.name}`);
  return selectWidget(spec, id, ['inception', ...clips]);
}

/** Accept files dropped on `zone` (without triggering the page's settings import). */
function dropTarget(zone, onFiles) {
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.add('drag');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('drag'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.remove('drag');
    document.body.classList.remove('dragging');
    const files = [...(event.dataTransfer?.files || [])];
    if (files.length) onFiles(files);
  });
}

/** One image: an upload (file or drop) or a gallery image; its value is `upload:ID`/`image:ID`. */
export function imageWidget(spec, form, id) {
  let ref = null;
  let pending = null;
  const listeners = [];
  const preview = el('img', { class: 'pick-preview', alt: '', hidden: true });
  const empty = el('div', { class: 'pick-empty', text: 'Drop an image here' });
  const zone = el('div', { class: 'pick-zone' }, preview, empty);
  const file = el('input', { id, type: 'file', accept: 'image/png,image/jpeg,image/webp',
                             class: 'visually-hidden' });
  const meta = el('div', { class: 'pick-meta' });
  const clear = el('button', { type: 'button', class: 'small ghost', text: 'Clear' });
  const setRef = (value, size = null) => {
    ref = value || null;
    preview.hidden = !ref;
    empty.hidden = Boolean(ref);
    if (ref) preview.src = refURL(ref);
    else preview.removeAttribute('src');
    meta.textContent = ref ? `${ref.split(':')[0]} · ${size ? `${size[0]}×${size[1]}` : ''}` : '';
    clear.hidden = !ref;
    listeners.forEach((fn) => fn(ref));
  };
  preview.addEventListener('load', () => {
    if (ref) meta.textContent = `${ref.split(':')[0]} · ${preview.naturalWidth}×${preview.naturalHeight}`;
  });
  const take = (picked) => {
    form.clearErrors();
    meta.textContent = 'uploading…';
    pending = upload(picked)
      .then((result) => setRef(result.ref, [result.width, result.height]))
      .catch((error) => { setRef(null); form.showError({ ...error, field: spec.name,
                                                          message: error.message }); })
      .finally(() => { pending = null; });
  };
  file.addEventListener('change', () => { if (file.files[0]) take(file.files[0]); file.value = ''; });
  dropTarget(zone, (files) => take(files[0]));
  clear.addEventListener('click', () => setRef(null));
  const gallery = el('button', { type: 'button', class: 'small', text: 'From gallery',
                                 onclick: async () => {
                                   const refs = await pickFromGallery({ multiple: false });
                                   if (refs.length) setRef(refs[0]);
                                 } });
  setRef(null);
  return {
    node: el('div', { class: 'image-picker' }, zone,
             el('div', { class: 'pick-actions' },
                el('label', { class: 'button small', for: id }, 'Upload…'), file, gallery, clear),
             meta),
    wide: true, labelFor: false, preview,
    get: async () => { if (pending) await pending; return ref ?? undefined; },
    set: (value) => setRef(value),
    reset: () => setRef(null),
    onchange: (fn) => listeners.push(fn),
    value: () => ref,
  };
}

const IMAGE_FILE = /\.(png|jpe?g|webp)$/i;

/** Several images: files / a whole folder (webkitdirectory), or gallery images. */
function imageListWidget(spec, form, id, { folder }) {
  let refs = [];
  let pending = null;
  const list = el('div', { class: 'chips' });
  const status = el('div', { class: 'pick-meta', 'data-testid': `${spec.name}-status` });
  const input = el('input', { id, type: 'file', multiple: true, class: 'visually-hidden',
                              accept: 'image/png,image/jpeg,image/webp' });
  if (folder) input.setAttribute('webkitdirectory', '');
  const render = () => {
    list.replaceChildren(...refs.slice(0, 24).map((ref, index) => el('span', { class: 'chip' },
      el('img', { src: refURL(ref, true), alt: '' }),
      el('button', { type: 'button', class: 'icon', title: 'Remove', text: '×',
                     onclick: () => { refs.splice(index, 1); render(); } }))));
    if (refs.length > 24) list.append(el('span', { class: 'chip more', text: `+${refs.length - 24}` }));
    if (!refs.length) {
      list.append(el('span', { class: 'pick-empty', text: folder ? 'Choose a folder (or drop images here)'
        : 'Drop images here' }));
    }
    if (!pending) status.textContent = refs.length ? `${refs.length} image(s)` : 'none chosen';
  };
  const take = (files) => {
    const images = files.filter((f) => f.type.startsWith('image/') || IMAGE_FILE.test(f.name));
    if (folder) refs = [];
    let done = 0;
    let failed = 0;
    const queue = [...images];
    status.textContent = `uploading 0 / ${images.length}…`;
    const next = async () => {
      while (queue.length) {
        const file = queue.shift();
        try {
          refs.push((await upload(await readDataURL(file))).ref);
        } catch {
          failed += 1;
        }
        done += 1;
        status.textContent = `uploading ${done} / ${images.length}…`;
      }
    };
    pending = Promise.all([next(), next(), next()]).then(() => {
      pending = null;
      render();
      if (failed) status.textContent += ` (${failed} could not be read)`;
    });
  };
  input.addEventListener('change', () => { take([...input.files]); input.value = ''; });
  const zone = el('div', { class: 'pick-zone list' }, list);
  dropTarget(zone, take);
  render();
  return {
    node: el('div', { class: 'image-picker' }, zone,
             el('div', { class: 'pick-actions' },
                el('label', { class: 'button small', for: id },
                   folder ? 'Choose folder…' : 'Add files…'), input,
                el('button', { type: 'button', class: 'small', text: 'From gallery',
                               onclick: async () => {
                                 refs.push(...await pickFromGallery({ multiple: true }));
                                 render();
                               } }),
                el('button', { type: 'button', class: 'small ghost', text: 'Clear',
                               onclick: () => { refs = []; render(); } })),
             status),
    wide: true, labelFor: false,
    get: async () => {
      if (pending) await pending;
      return refs.length || spec.required ? [...refs] : undefined;
    },
    set: (values) => { refs = [...(values || [])]; render(); },
    reset: () => { refs = []; render(); },
  };
}

/** A list of strings, one per line (commas also split the palette). */
function linesWidget(spec, id) {
  const input = el('textarea', { id, name: spec.name, rows: 2,
                                 placeholder: spec.name === 'palette' ? '#ff0000, #0000ff'
                                   : 'one per line' });
  const split = (text) => text.split(spec.name === 'palette' ? /[\n,]/ : /\n/)
    .map((s) => s.trim()).filter(Boolean);
  const reset = () => { input.value = (spec.default || []).join('\n'); };
  reset();
  return { node: input, input, wide: true, reset,
           get: () => { const values = split(input.value); return values.length ? values : undefined; },
           set: (value) => { input.value = (value || []).join('\n'); } };
}

/** LEFT, TOP, RIGHT, BOTTOM (outpainting borders). */
function bordersWidget(spec, id) {
  const sides = ['left', 'top', 'right', 'bottom'].map((side, i) => el('input', {
    id: i === 0 ? id : `${id}-${side}`, type: 'number', min: 0, step: 1, value: 0,
    name: `${spec.name}-${side}`, 'aria-label': side }));
  const node = el('div', { class: 'borders' }, sides.map((input, i) => el('label', {},
    el('span', { text: ['Left', 'Top', 'Right', 'Bottom'][i] }), input)));
  const widget = {
    node, wide: true, inputs: sides, labelFor: false,
    get: () => {
      const values = sides.map((input) => Number(input.value || 0));
      if (values.some((v) => !Number.isInteger(v))) {
        throw fieldError(spec.name, 'borders must be whole numbers of pixels');
      }
      return values.every((v) => v === 0) ? undefined : values;
    },
    set: (values) => sides.forEach((input, i) => { input.value = (values || [0, 0, 0, 0])[i]; }),
    reset: () => widget.set(null),
  };
  return widget;
}

/** Whether the form's ControlNet group has a map (without one no control field is sent). */
async function hasControlMap(form) {
  const map = form.get('control_image');
  return Boolean(map && map.visible && (await map.get()));
}

const first = (values) => [values ?? []].flat()[0];

/** One ControlNet's map: an image picker whose value is a one-element list (the API takes
 * several maps; the page offers one). */
function controlMapWidget(spec, form, id) {
  const widget = imageWidget(spec, form, id);
  const single = widget.get;
  return { ...widget,
           help: 'A condition map the size of the image (layout, edges or scribble), uploaded '
                 + 'or from the gallery. Leave it empty for no ControlNet.',
           get: async () => { const ref = await single(); return ref ? [ref] : undefined; },
           set: (values) => widget.set(first(values) || null) };
}

function controlModelWidget(spec, form, id) {
  const widget = modelWidget({ ...spec, optional: false, default: null }, id,
                             spec.families || ['controlnet']);
  return { ...widget, noHelp: false,
           help: 'The ControlNet that reads the map; it must be trained for the model above.',
           get: async () => ((await hasControlMap(form)) && widget.get() ? [widget.get()]
             : undefined),
           set: (values) => widget.set(first(values)) };
}

function controlNumberWidget(fallback, help) {
  return (spec, form, id) => {
    const widget = numberWidget({ name: spec.name, type: 'number', default: fallback,
                                  optional: false, required: false }, id);
    return { ...widget, help,
             get: async () => {
               if (!(await hasControlMap(form))) return undefined;
               const value = widget.get();
               return value === undefined ? undefined : [value];
             },
             set: (values) => widget.set(first(values) ?? fallback) };
  };
}

/** The generate form's ControlNet fields, as one control (see `controlMapWidget`). */
const CONTROL_WIDGETS = {
  control_image: controlMapWidget,
  control_model: controlModelWidget,
  control_scale: controlNumberWidget(1, 'How strongly the map steers: 0 is off, 1 as trained.'),
  control_start: controlNumberWidget(0, 'Fraction of the steps where control starts (0: the first).'),
  control_end: controlNumberWidget(1, 'Fraction of the steps where control ends (1: the last).'),
};

/** Reset every field of `form` to its schema default. */
export function resetForm(form) {
  for (const widget of form.widgets.values()) if (widget.reset) widget.reset();
  form.clearErrors();
}

