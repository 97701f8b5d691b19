// The inpainting mask painter: a canvas at the init image's real pixel size, shown scaled up
// (pixelated) over the image; brush / eraser / size / invert / clear. On submit the mask is
// exported as an opaque black-and-white PNG (white = repaint), uploaded, and sent as `upload:ID`.

import { el, fieldError, loadImage, refURL, upload } from './core.js';

const DISPLAY = 320;  // CSS pixels of the longer side
const PAINT = '#ff3d7f';

export function maskWidget(spec, form) {
  const init = form.get('init_image');
  const base = el('img', { class: 'mask-base', alt: '' });
  const canvas = el('canvas', { class: 'mask-canvas', 'data-testid': 'mask-canvas', width: 1, height: 1 });
  const stage = el('div', { class: 'mask-stage', hidden: true }, base, canvas);
  const hint = el('div', { class: 'pick-meta', text: 'Choose an init image above, then paint the area to repaint.' });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  let mode = 'brush';
  let size = 4;
  let drawing = false;
  let last = null;
  let uploaded = null;  // {ref} of the current mask, reused until it changes
  let loaded = null;

  const sizeInput = el('input', { type: 'range', min: 1, max: 32, value: size, 'aria-label': 'Brush size',
                                  'data-testid': 'brush-size' });
  const sizeText = el('span', { class: 'muted', text: `${size} px` });
  sizeInput.addEventListener('input', () => { size = Number(sizeInput.value); sizeText.textContent = `${size} px`; });
  const tools = el('div', { class: 'segmented compact' }, ['brush', 'eraser'].map((name) => el('button', {
    type: 'button', text: name === 'brush' ? 'Brush' : 'Eraser', class: name === mode ? 'on' : '',
    'data-testid': `tool-${name}`,
    onclick: (event) => { mode = name; [...tools.children].forEach((b) => b.classList.toggle('on', b === event.target)); },
  })));
  const changed = () => { uploaded = null; };
  const clear = () => { ctx.clearRect(0, 0, canvas.width, canvas.height); changed(); };
  const invert = () => {
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(PAINT.slice(i, i + 2), 16));
    for (let i = 0; i < data.data.length; i += 4) {
      const on = data.data[i + 3] >= 128;
      data.data.set(on ? [0, 0, 0, 0] : [r, g, b, 255], i);
    }
    ctx.putImageData(data, 0, 0);
    changed();
  };

  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (canvas.width / rect.width),
            (event.clientY - rect.top) * (canvas.height / rect.height)];
  };
  const stroke = (from, to) => {
    ctx.globalCompositeOperation = mode === 'eraser' ? 'destination-out' : 'source-over';
    ctx.strokeStyle = ctx.fillStyle = PAINT;
    ctx.lineWidth = size;
    ctx.lineCap = ctx.lineJoin = 'round';
    ctx.beginPath();
    if (from) { ctx.moveTo(...from); ctx.lineTo(...to); ctx.stroke(); }
    else { ctx.arc(to[0], to[1], size / 2, 0, Math.PI * 2); ctx.fill(); }
    changed();
  };
  canvas.addEventListener('pointerdown', (event) => {
    event.preventDefault();
    canvas.setPointerCapture?.(event.pointerId);
    drawing = true;
    last = point(event);
    stroke(null, last);
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  const stop = () => { drawing = false; last = null; };
  canvas.addEventListener('pointerup', stop);
  canvas.addEventListener('pointercancel', stop);

  const load = async (ref) => {
    loaded = ref;
    if (!ref) { stage.hidden = true; hint.hidden = false; return; }
    let image;
    try { image = await loadImage(refURL(ref)); } catch { return; }
    if (loaded !== ref) return;
    const [w, h] = [image.naturalWidth, image.naturalHeight];
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    clear();
    base.src = image.src;
    const scale = DISPLAY / Math.max(w, h);
    const shown = scale >= 1 ? Math.floor(scale) : scale;  // whole-number zoom keeps pixels square
    stage.style.width = `${Math.round(w * shown)}px`;
    stage.style.height = `${Math.round(h * shown)}px`;
    sizeInput.max = Math.max(2, Math.ceil(Math.max(w, h) / 2));
    if (size > Number(sizeInput.max)) { size = Math.max(1, Math.round(Math.max(w, h) / 8)); }
    sizeInput.value = size;
    sizeText.textContent = `${size} px`;
    stage.hidden = false;
    hint.hidden = true;
  };
  if (init && init.onchange) init.onchange(load);

  /** The mask as an opaque black/white PNG data URL, and how many pixels are white. */
  const exportMask = () => {
    const { width, height } = canvas;
    const source = ctx.getImageData(0, 0, width, height).data;
    const out = el('canvas', { width, height });
    const octx = out.getContext('2d');
    const image = octx.createImageData(width, height);
    let white = 0;
    for (let i = 0; i < source.length; i += 4) {
      const value = source[i + 3] >= 128 ? 255 : 0;
      if (value) white += 1;
      image.data.set([value, value, value, 255], i);
    }
    octx.putImageData(image, 0, 0);
    return { url: out.toDataURL('image/png'), white };
  };

  return {
    node: el('div', { class: 'mask-field' }, hint, stage,
             el('div', { class: 'mask-tools' }, tools, el('label', { class: 'inline' }, 'Size', sizeInput, sizeText),
                el('button', { type: 'button', class: 'small ghost', text: 'Invert', onclick: invert }),
                el('button', { type: 'button', class: 'small ghost', text: 'Clear', 'data-testid': 'mask-clear',
                               onclick: clear }))),
    wide: true, labelFor: false, label: 'Mask (paint where to repaint)',
    get: async () => {
      if (!loaded) return undefined;  // the init image field reports what is missing
      if (uploaded) return uploaded.ref;
      const { url, white } = exportMask();
      if (!white) {
        throw fieldError('mask', 'nothing is painted', 'paint over the part of the image to repaint ' +
                         '(or switch to Outpaint)');
      }
      uploaded = await upload(url);
      return uploaded.ref;
    },
    set: () => false,
    reset: clear,
    exportMask,
  };
}

/**
 * Outpainting preview under the border fields: the model's square canvas as the pipeline will
 * build it (the init image shrunk into the inner rectangle, the new border hatched), so a user
 * sees what the borders do before spending a run.
 */
export function outpaintPreview(form) {
  const borders = form.get('outpaint');
  const init = form.get('init_image');
  if (!borders || !init || !borders.inputs) return;
  const canvas = el('canvas', { class: 'outpaint-preview', 'data-testid': 'outpaint-preview',
                                width: 1, height: 1 });
  const note = el('div', { class: 'pick-meta', 'data-testid': 'outpaint-note' });
  const box = el('div', { class: 'outpaint-box', hidden: true }, canvas, note);
  borders.node.after(box);
  const ctx = canvas.getContext('2d');
  let image = null;
  const side = () => {
    const size = form.get('size');
    const model = form.get('model');
    return Number(size?.input?.value) || model?.info?.()?.image_size || 0;
  };
  const draw = () => {
    const s = side();
    const [left, top, right, bottom] = borders.inputs.map((input) => Math.max(0, Number(input.value) || 0));
    box.hidden = !image || !s || left + top + right + bottom === 0;
    if (box.hidden) return;
    const [w, h] = [s - left - right, s - top - bottom];
    canvas.width = s;
    canvas.height = s;
    ctx.fillStyle = '#2a2f3a';
    ctx.fillRect(0, 0, s, s);
    ctx.fillStyle = PAINT;
    for (let y = 0; y < s; y += 1) for (let x = (y % 4); x < s; x += 4) ctx.fillRect(x, y, 1, 1);
    if (w < 1 || h < 1) {
      note.textContent = `the borders do not fit a ${s}×${s} image: keep left+right and top+bottom under ${s}`;
      note.classList.add('error-text');
      return;
    }
    note.classList.remove('error-text');
    ctx.drawImage(image, left, top, w, h);
    note.textContent = `${s}×${s} result: your image shrunk to ${w}×${h}, the hatched border painted`;
  };
  init.onchange(async (ref) => {
    image = null;
    if (ref) { try { image = await loadImage(refURL(ref)); } catch { image = null; } }
    draw();
  });
  for (const input of borders.inputs) input.addEventListener('input', draw);
  form.get('size')?.input?.addEventListener('input', draw);
  form.get('model')?.onchange?.(draw);
}
