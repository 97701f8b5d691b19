// Jobs: submit (POST /api/jobs -> 202 + id), follow (Server-Sent Events, polling as a fallback),
// cancel, the output panel with the progress bar and live preview tiles, and the queue view.

import { api, el, formatSeconds, imageURL, jobSummary, thumbURL, timeAgo } from './core.js';
import { openDetail } from './gallery.js';

export const TERMINAL = new Set(['done', 'failed', 'cancelled']);
/** Jobs this page is following: id -> {tab, view}. */
export const running = new Map();

export function submitJob(kind, config) {
  return api('/api/jobs', { method: 'POST', body: { kind, config } });
}

export function cancelJob(id) {
  return api(`/api/jobs/${id}/cancel`, { method: 'POST' });
}

/** Follow job `id`: onProgress(job) for each update, onEnd(job) once. Returns {close}. */
export function watchJob(id, { onProgress = () => {}, onEnd = () => {} }) {
  let finished = false;
  let timer = null;
  let source = null;
  const end = (job) => {
    if (finished) return;
    finished = true;
    if (source) source.close();
    clearTimeout(timer);
    onEnd(job);
  };
  const poll = async () => {
    if (finished) return;
    try {
      const job = await api(`/api/jobs/${id}`);
      if (TERMINAL.has(job.state)) end(job);
      else { onProgress(job); timer = setTimeout(poll, 1000); }
    } catch (error) {
      if (error.status === 404 || error.status === 401) {
        end({ id, state: 'failed', error: { message: error.message, fix: error.fix } });
      } else {
        timer = setTimeout(poll, 2000);
      }
    }
  };
  source = new EventSource(`/api/jobs/${id}/events`);
  source.addEventListener('progress', (event) => { if (!finished) onProgress(JSON.parse(event.data)); });
  source.addEventListener('end', (event) => end(JSON.parse(event.data)));
  source.onerror = () => {
    if (!finished && source.readyState === EventSource.CLOSED) poll();  // refused: poll instead
  };
  return { close: () => { finished = true; source.close(); clearTimeout(timer); } };
}

/** The output panel of one tab: state, progress bar, preview/final tiles and a result area. */
export class JobView {
  constructor(root, { title = 'Output', empty = 'Results appear here.' } = {}) {
    this.root = root;
    this.badge = el('span', { class: 'badge', 'data-testid': 'job-state', hidden: true });
    this.fill = el('div', { class: 'fill' });
    this.text = el('div', { class: 'progress-text', 'data-testid': 'progress-text' });
    this.cancelButton = el('button', { type: 'button', class: 'small danger',
                                       'data-testid': 'cancel', text: 'Cancel',
                                       onclick: () => this.cancel() });
    this.progressBox = el('div', { class: 'progress', hidden: true },
                          el('div', { class: 'bar' }, this.fill),
                          el('div', { class: 'progress-row' }, this.text, this.cancelButton));
    this.error = el('div', { class: 'job-error', role: 'alert', hidden: true,
                             'data-testid': 'job-error' });
    this.tiles = el('div', { class: 'tiles', 'data-testid': 'tiles' });
    this.extra = el('div', { class: 'result' });
    this.placeholder = el('div', { class: 'empty' }, el('p', { text: empty }),
                          el('p', { class: 'muted' }, el('kbd', { text: 'Ctrl' }), '+',
                             el('kbd', { text: 'Enter' }), ' runs, ', el('kbd', { text: 'Esc' }),
                             ' cancels the running job.'));
    root.replaceChildren(el('div', { class: 'out-head' }, el('h2', { text: title }), this.badge),
                         this.progressBox, this.error, this.placeholder, this.tiles, this.extra);
    this.jobId = null;
  }

  setState(stateName, text = stateName) {
    this.root.dataset.state = stateName;
    this.badge.hidden = false;
    this.badge.className = `badge ${stateName}`;
    this.badge.textContent = text;
  }

  start(id, kind, config) {
    this.jobId = id;
    this.root.dataset.jobId = id;
    this.kind = kind;
    this.config = config;
    this.placeholder.hidden = true;
    this.error.hidden = true;
    this.extra.replaceChildren();
    this.progressBox.hidden = false;
    this.cancelButton.hidden = false;
    this.cancelButton.disabled = false;
    this.fill.style.width = '0%';
    this.text.textContent = 'queued';
    this.setState('queued');
    const count = kind === 'generate' ? (config.n || 1) : kind === 'dream' ? 1 : 0;
    this.tiles.replaceChildren(...Array.from({ length: count }, (_, i) => this.tile(i)));
    // a batch of 4 as 2 x 2, small batches side by side, bigger ones as many as fit
    const columns = count === 4 ? 2 : count <= 3 ? count : 0;
    this.tiles.style.gridTemplateColumns = columns ? `repeat(${columns}, minmax(0, 240px))` : '';
  }

  tile(index) {
    const seed = (this.config.seed || 0) + (this.kind === 'generate' ? index : 0);
    const img = el('img', { class: 'waiting', alt: `image ${index + 1}`, 'data-testid': 'tile-image' });
    return el('figure', { class: 'tile', 'data-testid': 'tile' }, el('div', { class: 'frame' }, img),
              el('figcaption', { text: `seed ${seed}` }));
  }

  progress(job) {
    if (job.id !== this.jobId) return;
    const p = job.progress || {};
    this.setState(job.state, job.cancel_requested ? 'cancelling' : job.state);
    if (job.state === 'queued') { this.text.textContent = 'queued'; return; }
    const total = p.total || 0;
    const step = p.step || 0;
    this.fill.style.width = total ? `${Math.min(100, (100 * step) / total)}%` : '0%';
    const parts = [`step ${step} / ${total}`];
    if (typeof p.sigma === 'number') parts.push(`σ ${p.sigma < 10 ? p.sigma.toFixed(3) : p.sigma.toFixed(1)}`);
    if (typeof p.loss === 'number') parts.push(`loss ${p.loss.toFixed(4)}`);
    parts.push(`ETA ${formatSeconds(p.eta_s)}`);
    if (p.phase && p.phase !== 'sampling') parts.push(p.phase);
    this.text.textContent = parts.join(' · ');
    const images = [...this.tiles.querySelectorAll('img')];
    (p.previews || []).forEach((url, i) => {
      if (!images[i]) return;
      images[i].src = url;
      images[i].className = 'preview';
    });
  }

  end(job) {
    if (job.id !== this.jobId) return;
    this.setState(job.state);
    this.cancelButton.hidden = true;
    if (job.state === 'done') {
      this.fill.style.width = '100%';
      const took = job.finished && job.started ? ` in ${formatSeconds(job.finished - job.started)}` : '';
      this.text.textContent = `done${took}`;
      const ids = (job.result && job.result.images) || [];
      const images = [...this.tiles.querySelectorAll('figure')];
      ids.forEach((id, i) => {
        const figure = images[i] || this.tiles.appendChild(this.tile(i));
        const img = figure.querySelector('img');
        img.src = imageURL(id);
        img.className = 'final';
        img.dataset.imageId = id;
        figure.classList.add('clickable');
        figure.title = 'Open details';
        figure.onclick = () => openDetail(id);
      });
    } else {
      this.text.textContent = job.state === 'cancelled' ? 'cancelled: nothing was saved' : 'failed';
      for (const figure of this.tiles.querySelectorAll('figure')) figure.classList.add('dim');
      if (job.state === 'failed') this.showError(job.error || {});
    }
  }

  showError(error) {
    this.error.replaceChildren(el('strong', { text: error.field ? `${error.field}: ` : '' }),
                               error.message || 'the job failed',
                               error.fix ? el('div', { class: 'fix', text: `Fix: ${error.fix}` }) : '');
    this.error.hidden = false;
  }

  async cancel() {
    if (!this.jobId || this.root.dataset.state === 'done') return;
    this.cancelButton.disabled = true;
    this.setState(this.root.dataset.state || 'running', 'cancelling');
    try {
      const answer = await cancelJob(this.jobId);
      if (answer.state === 'cancelled') this.setState('cancelled');
    } catch (error) {
      this.showError(error);
    }
  }
}

export const differ = (n) => `${n} pixel${n === 1 ? '' : 's'} differ${n === 1 ? 's' : ''}`;

/** GET /api/jobs as a table, refreshed while visible. */
export class QueueView {
  constructor(root) {
    this.root = root;
    this.counts = el('span', { class: 'muted', 'data-testid': 'queue-counts' });
    this.body = el('tbody');
    root.replaceChildren(
      el('div', { class: 'toolbar' }, el('h2', { text: 'Queue' }), this.counts,
         el('span', { class: 'spacer' }),
         el('button', { type: 'button', class: 'small', text: 'Refresh',
                        onclick: () => this.refresh() })),
      el('div', { class: 'table-wrap' },
         el('table', { class: 'jobs', 'data-testid': 'jobs-table' },
            el('thead', {}, el('tr', {}, ['When', 'Kind', 'What', 'State', 'Result', ''].map(
              (h) => el('th', { text: h })))), this.body)));
    this.timer = null;
  }

  show() { this.refresh(); clearInterval(this.timer); this.timer = setInterval(() => this.refresh(), 2000); }
  hide() { clearInterval(this.timer); this.timer = null; }

  async refresh() {
    let data;
    try { data = await api('/api/jobs?limit=100'); } catch { return; }
    const counts = Object.entries(data.queue || {}).map(([k, v]) => `${v} ${k}`).join(' · ');
    this.counts.textContent = counts || 'no jobs yet';
    this.body.replaceChildren(...data.jobs.map((job) => this.row(job)));
    if (!data.jobs.length) {
      this.body.append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'No jobs yet.' })));
    }
  }

  row(job) {
    const result = el('div', { class: 'result-cell' });
    const ids = (job.result && job.result.images) || [];
    for (const id of ids.slice(0, 6)) {
      result.append(el('img', { class: 'mini', src: thumbURL(id), alt: '', title: 'Open details',
                                onclick: () => openDetail(id) }));
    }
    if (job.kind === 'reproduce' && job.result) {
      result.append(job.result.identical ? 'identical' : differ(job.result.pixels_differ));
    }
    if (job.error) result.append(el('span', { class: 'error-text', text: job.error.message || 'failed' }));
    const active = job.state === 'queued' || job.state === 'running';
    return el('tr', { dataset: { jobId: job.id, state: job.state } },
      el('td', { class: 'muted', text: timeAgo(job.created) }),
      el('td', { text: job.kind }),
      el('td', { class: 'summary', text: jobSummary(job.kind, job.config), title: jobSummary(job.kind, job.config) }),
      el('td', {}, el('span', { class: `badge ${job.state}`,
                               text: job.cancel_requested && active ? 'cancelling' : job.state })),
      el('td', {}, result),
      el('td', {}, active ? el('button', { type: 'button', class: 'small danger', text: 'Cancel',
                                           onclick: async () => { await cancelJob(job.id); this.refresh(); } })
        : ''));
  }
}
