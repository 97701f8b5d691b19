// Shared helpers: DOM building (no innerHTML: every text goes through textContent), the JSON
// API client (same-origin cookies, JSON bodies), uploads, image references, and notices.

export const state = { schema: null, models: [], defaultModel: null };

/** el('div', {class: 'x', text: 'hi', onclick: fn, dataset: {a: 1}}, child, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** An error the server (or the page) reports about one field. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `request failed (${status})`);
    this.status = status;
    this.field = error.field || null;
    this.fix = error.fix || null;
    this.kind = error.error || 'Error';
  }
}

/** A field error raised by the page itself (e.g. an empty mask). */
export function fieldError(field, message, fix = null) {
  return new ApiError(422, { error: { error: 'PageError', field, message, fix } });
}

/** fetch JSON from the studio API; POST/DELETE bodies are always JSON. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const options = { method, credentials: 'same-origin', signal,
                    headers: { Accept: 'application/json' } };
  if (method !== 'GET' && method !== 'HEAD') {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (exc) {
    if (exc.name === 'AbortError') throw exc;
    setOffline(true);
    throw new ApiError(0, { error: { message: 'the studio server does not answer',
                                      fix: 'is `imagesynth serve` still running?' } });
  }
  setOffline(false);
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (response.status === 401) showAuthBanner(data);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function setOffline(offline) {
  document.body.classList.toggle('offline', offline);
}

export function showAuthBanner(data) {
  const banner = $('#banner');
  if (!banner) return;
  const error = (data && data.error) || {};
  const sentence = (text) => `${text.charAt(0).toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? '' : '.'}`;
  banner.replaceChildren(
    el('strong', { text: 'Not signed in. ' }),
    `${sentence(error.message || 'a valid token is required')} `,
    sentence(error.fix || 'open the login link `imagesynth serve` printed (…/login?token=…)'));
  banner.hidden = false;
}

export function readDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error || new Error('cannot read the file'));
    reader.readAsDataURL(file);
  });
}

/** Upload a File, Blob or data URL; resolves to {ref, id, width, height}. */
export async function upload(source) {
  const data = typeof source === 'string' ? source : await readDataURL(source);
  return api('/api/uploads', { method: 'POST', body: { data } });
}

/** `upload:ID` / `image:ID` -> the URL of its PNG (thumb: the gallery thumbnail). */
export function refURL(ref, thumb = false) {
  const match = /^(upload|image):([0-9a-f]{32})/.exec(ref || '');
  if (!match) return '';
  if (match[1] === 'upload') return `/api/uploads/${match[2]}`;
  return `/api/images/${match[2]}${thumb ? '/thumb' : ''}`;
}

export const imageURL = (id) => `/api/images/${id}`;
export const thumbURL = (id) => `/api/images/${id}/thumb`;

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${src}`));
    image.src = src;
  });
}

/** A toast in the notice area; `lines` become a list, `persist` keeps it until closed. */
export function notify(title, { lines = [], kind = 'info', persist = false, actions = [],
                                testid = null } = {}) {
  const area = $('#notices');
  const close = el('button', { class: 'icon', type: 'button', title: 'Dismiss',
                               'aria-label': 'Dismiss', text: '×' });
  const box = el('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status',
                          'data-testid': testid },
                 el('div', { class: 'notice-head' }, el('strong', { text: title }), close));
  if (lines.length) box.append(el('ul', {}, lines.map((line) => el('li', {}, line))));
  if (actions.length) {
    box.append(el('div', { class: 'notice-actions' }, actions.map(([label, fn]) =>
      el('button', { type: 'button', class: 'small', text: label,
                     onclick: () => { fn(); box.remove(); } }))));
  }
  close.addEventListener('click', () => box.remove());
  area.prepend(box);
  while (area.children.length > 4) area.lastElementChild.remove();
  if (!persist) setTimeout(() => box.remove(), kind === 'error' ? 12000 : 5000);
  return box;
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '…';
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds % 60)} s`;
}

export function timeAgo(epochSeconds) {
  if (!epochSeconds) return '';
  const delta = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (delta < 60) return 'just now';
  if (delta < 3600) return `${Math.floor(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.floor(delta / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

/** A short description of a job config for lists (prompt, labels, query...). */
export function jobSummary(kind, config = {}) {
  if (config.prompt) return config.prompt;
  if (kind === 'classify') return `${(config.images || []).length} image(s): ${config.labels}`;
  if (kind === 'search') return config.query || 'by image';
  if (kind === 'evaluate') {
    return `${(config.generated || []).length} vs ${(config.reference || []).length} images`;
  }
  if (kind === 'reproduce') return 'reproduce a gallery image';
  return '';
}
