// The studio page: tabs, forms from GET /api/schema, jobs with live previews, the gallery and
// the queue, PNG settings import (drag a PNG anywhere), keyboard shortcuts. No build step, no
// framework, nothing from the network but this server.

import { $, $$, api, el, fieldError, notify, refURL, state, thumbURL } from './core.js';
import { Form, label, resetForm } from './forms.js';
import { Gallery, Recent, galleryChanged, hooks, openDetail } from './gallery.js';
import { JobView, QueueView, running, submitJob, watchJob } from './jobs.js';
import { maskWidget, outpaintPreview } from './mask.js';

const GENERATE = ['prompt', 'negative', 'model', 'n', 'seed', 'steps', 'guidance', 'sampler'];
/** Under "More options" of the generate tabs: CFG rescale and CLIP guidance. */
const GENERATE_MORE = ['size', 'guidance_rescale', 'clip_guidance', 'clip_model', 'clip_cutouts'];
/** One ControlNet (map, model, scale, window); the API takes several. */
const CONTROL = { title: 'ControlNet', testid: 'group-controlnet',
                  fields: ['control_image', 'control_model', 'control_scale', 'control_start',
                           'control_end'] };
const DREAM_MAIN = ['prompt', 'drawer', 'scorer', 'steps', 'width', 'height', 'seed', 'cells',
                    'palette', 'decoder', 'diffusion_model', 'diffusion_steps', 'diffusion_sampler',
                    'diffusion_guidance', 'init_image', 'image_prompts', 'style'];
const DRAWER_FIELDS = { pixelart: ['cells', 'palette'], decoder: ['decoder', 'range_weight'],
                        'diffusion-latent': ['diffusion_model', 'diffusion_steps',
                                             'diffusion_sampler', 'diffusion_guidance'] };
const DRAWERS = {
  pixels: 'Optimise every pixel directly: fast and noisy.',
  fourier: 'Optimise Fourier coefficients (decorrelated colour): smoother images.',
  pixelart: 'A grid of flat colour cells (PixelDraw), optionally from a palette.',
  decoder: 'Optimise an autoencoder latent through its decoder (VQGAN+CLIP style).',
  'diffusion-latent': "Optimise the starting noise of a diffusion model's deterministic sampler.",
};

const TABS = {
  txt2img: { label: 'Text → image', kind: 'generate', title: 'Text to image', submit: 'Generate',
             fields: GENERATE, groups: [CONTROL], advanced: GENERATE_MORE,
             help: 'Describe an image; the diffusion model samples it. Image i uses seed + i.' },
  img2img: { label: 'img2img', kind: 'generate', title: 'Image to image', submit: 'Generate',
             fields: ['init_image', 'prompt', 'negative', 'model', 'strength', 'n', 'seed',
                      'steps', 'guidance', 'sampler'], groups: [CONTROL], advanced: GENERATE_MORE,
             require: 'init_image',
             help: 'Start from an image and re-noise it by the strength, then denoise toward the prompt.' },
  inpaint: { label: 'Inpaint / outpaint', kind: 'generate', title: 'Inpaint or outpaint',
             submit: 'Paint', require: 'init_image',
             fields: ['init_image', 'mode', 'mask', 'outpaint', 'prompt', 'negative', 'model',
                      'mask_blur', 'n', 'seed', 'steps', 'guidance', 'sampler'],
             advanced: ['strength', 'size'],
             help: 'Repaint the white part of a mask you paint, or extend the image beyond its borders.' },
  dream: { label: 'Dream', kind: 'dream', title: 'Dream (CLIP-guided)', submit: 'Dream',
           fields: DREAM_MAIN, segmented: ['drawer'], descriptions: DRAWERS,
           help: 'Gradient ascent on a drawer\'s parameters until a CLIP scorer agrees with the prompt.' },
  classify: { label: 'Classify', kind: 'classify', title: 'Zero-shot classification', submit: 'Classify',
              fields: ['images', 'labels', 'templates', 'model', 'top'],
              help: 'Rank your labels for each image with a CLIP model.' },
  search: { label: 'Search', kind: 'search', title: 'Semantic search', submit: 'Search',
            fields: ['query', 'image', 'model', 'top'],
            help: 'Find gallery images by meaning, with a text query or an example image.' },
  evaluate: { label: 'Evaluate', kind: 'evaluate', title: 'Evaluate a set of images', submit: 'Evaluate',
              fields: ['generated', 'reference', 'metrics', 'extractor'],
              advanced: ['kid_subset_size', 'kid_subsets', 'seed', 'batch_size'],
              help: 'Compare two folders of images: FD/FID, KID, precision/recall, density/coverage, IS.' },
  gallery: { label: 'Gallery' },
  queue: { label: 'Queue' },
};

const forms = {};
const views = {};
let current = 'txt2img';
let gallery;
let queue;

function modeWidget(spec, form) {
  const buttons = ['Inpaint', 'Outpaint'].map((text) => el('button', { type: 'button', text,
                                                                       'data-testid': `mode-${text.toLowerCase()}` }));
  const apply = (outpaint) => {
    buttons.forEach((b, i) => b.classList.toggle('on', i === (outpaint ? 1 : 0)));
    form.setVisible('mask', !outpaint);
    form.setVisible('outpaint', outpaint);
  };
  buttons.forEach((b, i) => b.addEventListener('click', () => apply(i === 1)));
  queueMicrotask(() => apply(false));
  return { node: el('div', { class: 'segmented compact' }, buttons), wide: true, labelFor: false,
           label: 'Mode', reset: () => apply(false) };
}

function buildTab(id) {
  const tab = TABS[id];
  const section = el('section', { class: 'view', id: `view-${id}`, dataset: { view: id }, hidden: true });
  $('#views').append(section);
  if (id === 'gallery') { gallery = new Gallery(section); section.classList.add('card'); return; }
  if (id === 'queue') { queue = new QueueView(section); section.classList.add('card'); return; }
  section.classList.add('job-view');
  const formEl = el('form', { class: 'job-form', dataset: { kind: tab.kind } });
  const head = el('div', { class: 'card-head' }, el('h2', { text: tab.title }),
                  el('p', { class: 'muted', text: tab.help }));
  const output = el('div', { class: 'output card', 'data-testid': 'output' });
  section.append(el('div', { class: 'form-col card' }, head, formEl), output);
  let advanced = tab.advanced || [];
  if (id === 'dream') {
    advanced = state.schema.kinds.dream.fields.map((f) => f.name).filter((n) => !DREAM_MAIN.includes(n));
  }
  const widgets = id === 'inpaint' ? { mode: modeWidget, mask: maskWidget } : {};
  const form = new Form(formEl, tab.kind, { fields: tab.fields, advanced, groups: tab.groups,
                                            widgets, submitLabel: tab.submit,
                                            segmented: tab.segmented, descriptions: tab.descriptions });
  form.onsubmit = () => submit(id);
  if (id === 'inpaint') outpaintPreview(form);
  forms[id] = form;
  views[id] = new JobView(output, { empty: id === 'search' ? 'Matching gallery images appear here.'
    : 'Results appear here.' });
  if (id === 'dream') {
    const drawer = form.get('drawer');
    const apply = (name) => {
      for (const [owner, names] of Object.entries(DRAWER_FIELDS)) {
        for (const n of names) form.setVisible(n, owner === name);
      }
      form.setVisible('init_image', name !== 'diffusion-latent');
      form.setVisible('init_colour', name !== 'diffusion-latent');
    };
    if (drawer.onchange) {  // the schema gives the drawers as choices (a picker)
      drawer.onchange(apply);
      queueMicrotask(() => apply(drawer.value()));
    }
  }
}

function showTab(id) {
  if (!TABS[id]) id = 'txt2img';
  if (document.body.dataset.ready !== 'true') {
    // A tab clicked while the schema still loads: remember it; main() opens it when built.
    history.replaceState(null, '', `#${id}`);
    return;
  }
  current = id;
  for (const section of $$('#views > .view')) section.hidden = section.dataset.view !== id;
  for (const button of $$('#tabs button')) {
    const on = button.dataset.tab === id;
    button.classList.toggle('on', on);
    button.setAttribute('aria-selected', on ? 'true' : 'false');
  }
  document.body.classList.toggle('wide', id === 'gallery' || id === 'queue');
  if (location.hash !== `#${id}`) history.replaceState(null, '', `#${id}`);
  if (id === 'gallery') gallery.load();
  if (id === 'queue') queue.show(); else queue.hide();
}

async function submit(id) {
  const tab = TABS[id];
  const form = forms[id];
  const view = views[id];
  if (!form) return;
  form.clearErrors();
  let config;
  try {
    if (tab.require && !(await form.get(tab.require).get())) {
      throw fieldError(tab.require, 'choose an image first', 'upload one, drop one here, or pick a gallery image');
    }
    config = await form.collect();
  } catch (error) {
    form.showError(error);
    return;
  }
  form.button.disabled = true;
  let answer;
  try {
    answer = await submitJob(tab.kind, config);
  } catch (error) {
    form.showError(error);
    return;
  } finally {
    form.button.disabled = false;
  }
  view.start(answer.id, tab.kind, config);
  running.set(answer.id, { tab: id, view });
  refreshStatus();
  watchJob(answer.id, {
    onProgress: (job) => view.progress(job),
    onEnd: (job) => {
      running.delete(answer.id);
      view.end(job);
      if (job.state === 'failed' && job.error && job.error.field && view.jobId === job.id) {
        form.showError(job.error);
      }
      if (job.state === 'done') { renderResult(id, job, view); galleryChanged(); }
      refreshStatus();
    },
  });
}

function percent(value) { return `${(100 * value).toFixed(1)}%`; }

function renderResult(id, job, view) {
  const result = job.result || {};
  const out = view.extra;
  if (job.kind === 'dream' && result.scores) {
    const scores = result.scores;
    const fmt = (row) => Object.entries(row || {}).filter(([k, v]) => typeof v === 'number' && k !== 'step')
      .map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ');
    out.append(el('p', { class: 'muted', text: `start: ${fmt(scores.initial)} → end: ${fmt(scores.final)}` }));
    if (scores.adversarial) {
      out.append(el('p', { class: 'warn', text: 'The held-out scorer disagrees: this image may fool only the scorer it was optimised for.' }));
    }
  } else if (job.kind === 'classify') {
    out.append(el('div', { class: 'classify' }, (result.results || []).map((row) => el('div', { class: 'class-row' },
      el('img', { src: refURL(row.image, true), alt: '', class: 'class-thumb' }),
      el('ol', {}, row.labels.map((entry) => el('li', {},
        el('span', { class: 'label', text: entry.label }),
        el('span', { class: 'meter' }, el('span', { class: 'meter-fill', dataset: { p: entry.probability } })),
        el('span', { class: 'muted', text: percent(entry.probability) }))))))));
    for (const fill of $$('.meter-fill', out)) fill.style.width = percent(Number(fill.dataset.p));
    out.append(el('p', { class: 'muted', text: `model: ${result.model}` }));
  } else if (job.kind === 'search') {
    const hits = result.results || [];
    out.append(el('div', { class: 'grid' }, hits.map((hit) => el('figure', {
      class: 'card', tabindex: 0, 'data-testid': 'search-hit', onclick: () => openDetail(hit.image) },
      el('div', { class: 'frame' }, el('img', { src: thumbURL(hit.image), alt: hit.prompt })),
      el('figcaption', {}, el('span', { class: 'prompt', text: `#${hit.rank} ${hit.prompt}` }),
         el('span', { class: 'muted', text: `score ${hit.score.toFixed(4)}` }))))));
    if (!hits.length) out.append(el('p', { class: 'muted', text: 'No gallery image matched (is the gallery empty?).' }));
  } else if (job.kind === 'evaluate') {
    const rows = [];
    const walk = (prefix, value) => {
      if (value && typeof value === 'object' && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
      } else {
        rows.push([prefix, typeof value === 'number' ? (Number.isInteger(value) ? String(value) : value.toPrecision(5))
          : JSON.stringify(value)]);
      }
    };
    walk('', result.metrics || {});
    const metricRows = rows.length;
    const rest = { ...result };
    delete rest.metrics;
    walk('', rest);
    out.append(el('table', { class: 'metrics', 'data-testid': 'metrics' },
                  el('tbody', {}, rows.map(([k, v], i) => el('tr', { class: i < metricRows ? 'metric' : 'meta' },
                                                             el('th', { text: k }), el('td', { text: v }))))));
  }
}

const SOURCES = { imagesynth: 'imagesynth', invokeai: 'InvokeAI', comfyui: 'ComfyUI',
                  a1111: 'AUTOMATIC1111', fooocus: 'Fooocus', other: 'an unknown tool', none: 'nothing' };
const IMPORTED = [['prompt', 'prompt'], ['negative_prompt', 'negative'], ['seed', 'seed'],
                  ['steps', 'steps'], ['guidance_scale', 'guidance'], ['sampler', 'sampler'],
                  ['model', 'model']];

function short(value) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 120 ? `${text.slice(0, 117)}…` : text;
}

/** Read a PNG's generation settings (POST /api/metadata) into the text-to-image form. */
async function importSettings(file) {
  let data;
  try {
    const dataURL = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    data = await api('/api/metadata', { method: 'POST', body: { data: dataURL } });
  } catch (error) {
    notify(`Cannot read settings from ${file.name}`, { kind: 'error', lines: [error.message, error.fix].filter(Boolean),
                                                       testid: 'import-notice' });
    return;
  }
  const settings = data.settings || {};
  const unknown = Object.entries(data.unknown || {});
  const lines = [];
  if (data.source === 'none' || !Object.keys(settings).length) {
    lines.push('The image carries no generation settings the studio can read.');
  } else {
    const form = forms.txt2img;
    resetForm(form);
    const applied = [];
    const skipped = [];
    for (const [key, field] of IMPORTED) {
      if (settings[key] === undefined) continue;
      if (form.set(field, settings[key])) applied.push(label(field));
      else skipped.push(`${key}: ${short(settings[key])} (not available here)`);
    }
    if (settings.strength !== undefined && forms.img2img.set('strength', settings.strength)) {
      applied.push('strength (on img2img)');
    }
    if (settings.width || settings.height) {
      skipped.push(`size ${settings.width}×${settings.height} (each model samples at its own size)`);
    }
    showTab('txt2img');
    lines.push(el('span', {}, el('strong', { text: 'Applied: ' }), applied.join(', ') || 'nothing'));
    for (const line of skipped) lines.push(el('span', {}, el('strong', { text: 'Not applied: ' }), line));
  }
  for (const [key, value] of unknown) {
    lines.push(el('span', { class: 'unknown', dataset: { key } }, el('strong', { text: 'Unknown: ' }),
                  `${key} = ${short(value)}`));
  }
  notify(`Settings from ${SOURCES[data.source] || data.source} (${file.name})`,
         { lines, persist: true, kind: data.source === 'none' ? 'error' : 'info', testid: 'import-notice' });
}

function setUpDrop() {
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes('Files');
  document.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove('dragging');
  });
  document.addEventListener('dragover', (event) => { if (hasFiles(event)) event.preventDefault(); });
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove('dragging');
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) importSettings(file);
  });
  const input = $('#import-file');
  input.addEventListener('change', () => { if (input.files[0]) importSettings(input.files[0]); input.value = ''; });
}

function setUpKeys() {
  document.addEventListener('keydown', (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') {
      event.preventDefault();
      if (forms[current]) submit(current);
    } else if (event.key === 'Escape' && !document.querySelector('dialog[open]')) {
      const view = views[current];
      const mine = view && view.jobId && running.has(view.jobId) ? view.jobId : null;
      const id = mine || [...running.keys()].pop();
      if (id) { event.preventDefault(); running.get(id).view.cancel(); }
    }
  });
}

async function refreshStatus() {
  const box = $('#status');
  try {
    const status = await api('/api/status');
    const queueCounts = status.queue || {};
    const busy = ['running', 'queued'].filter((k) => queueCounts[k]).map((k) => `${queueCounts[k]} ${k}`);
    box.replaceChildren(el('span', { class: `dot ${status.worker_alive ? 'ok' : 'bad'}` }),
                        status.worker_alive ? (busy.join(' · ') || 'idle') : 'worker down');
    box.title = `imagesynth ${status.version}; worker restarts: ${status.worker_restarts}`;
  } catch (error) {
    box.replaceChildren(el('span', { class: 'dot bad' }), error.status === 401 ? 'not signed in' : 'offline');
  }
}

hooks.reuse = (recipe, image) => {
  if (recipe.kind === 'dream' && recipe.dream) {
    const form = forms.dream;
    resetForm(form);
    for (const [key, value] of Object.entries(recipe.dream)) {
      if (key !== 'init_image' && key !== 'image_prompts' && form.get(key)) form.set(key, value);
    }
    showTab('dream');
  } else {
    const form = forms.txt2img;
    resetForm(form);
    const clip = recipe.clip_guidance || {};
    const control = (recipe.controls || [])[0] || {};
    const values = { prompt: recipe.prompt ?? image.prompt, negative: recipe.negative_prompt,
                     seed: recipe.seed, steps: recipe.steps, guidance: recipe.guidance_scale,
                     sampler: recipe.sampler, model: recipe.model,
                     guidance_rescale: recipe.guidance_rescale, clip_guidance: clip.scale,
                     clip_model: clip.model, clip_cutouts: clip.cutouts,
                     control_model: control.model, control_scale: control.scale,
                     control_start: control.start, control_end: control.end };
    const missing = Object.entries(values).filter(([k, v]) => v !== undefined && !form.set(k, v));
    if (recipe.controls && recipe.controls.length) {  // a recipe keeps a map's hash, not the map
      missing.push(['control_image', 'choose the control map again']);
    }
    showTab('txt2img');
    if (missing.length) {
      notify('Some settings could not be applied', { lines: missing.map(([k, v]) => `${k}: ${v}`) });
    }
  }
  notify('Settings loaded from the gallery image');
};

hooks.sendTo = (id, ref) => {
  forms[id].set('init_image', ref);
  showTab(id);
};

async function main() {
  const nav = $('#tabs');
  for (const [id, tab] of Object.entries(TABS)) {
    nav.append(el('button', { type: 'button', role: 'tab', text: tab.label, dataset: { tab: id },
                              onclick: () => showTab(id) }));
  }
  try {
    const [schema, models] = await Promise.all([api('/api/schema'), api('/api/models')]);
    state.schema = schema;
    state.models = models.models;
    state.defaultModel = schema.default_model || models.default;
  } catch (error) {
    $('#views').replaceChildren(el('div', { class: 'card fatal' }, el('h2', { text: 'The studio cannot start' }),
                                   el('p', { text: error.message }), error.fix ? el('p', { text: error.fix }) : ''));
    return;
  }
  for (const id of Object.keys(TABS)) buildTab(id);
  new Recent($('#recent'), () => showTab('gallery')).load();
  setUpDrop();
  setUpKeys();
  window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));
  document.body.dataset.ready = 'true';
  showTab(location.hash.slice(1) || 'txt2img');
  refreshStatus();
  setInterval(refreshStatus, 4000);
}

main();
